"""tensor.ai vGPU."""
