"""Board top levels and bitstream builds."""
