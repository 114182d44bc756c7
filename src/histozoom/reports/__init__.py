"""Tables, plots and reports built from results."""
