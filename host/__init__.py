"""Host software: numerics, compiler and runtime."""
