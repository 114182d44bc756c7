"""Networks: branch pieces, the cell–tissue family (all OCELOT variants), CHR-Net; a registry."""
