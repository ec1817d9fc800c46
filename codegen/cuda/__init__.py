"""The CUDA backend: kernels as LLVM IR for NVPTX, PTX for NVIDIA GPUs."""
