"""Custom operators (pure PyTorch, with optional compiled kernels)."""
