"""tensor.ai vGPU local demo and the test doubles it shares with tests: stub kubelet and Kubernetes API stand-in."""
