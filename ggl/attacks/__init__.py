"""Gradient-inversion attacks (DLG, iDLG, Inverting Gradients, GGL), their shared objective and search."""
