// Process-wide LibTorch settings and statistics, behind a torch-free header so the worker's
// runtime and main need no torch includes.
#ifndef WMSERVE_WORKER_MODELS_TORCH_RUNTIME_H_
#define WMSERVE_WORKER_MODELS_TORCH_RUNTIME_H_

#include <cstdint>
#include <string>

namespace wmserve::worker {

// Intra-op threads for CPU kernels; <= 0 keeps LibTorch's default.
void SetTorchThreads(int threads);
int GetTorchThreads();
// Applies the process's thread setting to the calling thread. LibTorch's OpenMP builds keep the
// thread count per OS thread, so every rollout thread calls this before running a model.
void InitTorchThread();
// "torch 1.13.0 (cpu)" etc., for logs and build info.
std::string TorchDescription();

// The LibTorch CUDA caching allocator's view of one device. `available` is false in builds
// without CUDA (the code compiles out) and when the device does not exist.
struct CudaAllocatorStats {
  bool available = false;
  uint64_t allocated_bytes = 0;       // held by live tensors
  uint64_t reserved_bytes = 0;        // held by the allocator (allocated + cached)
  uint64_t peak_allocated_bytes = 0;  // since the last ResetCudaPeak()
};
CudaAllocatorStats GetCudaAllocatorStats(int device);
void ResetCudaPeak(int device);

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_MODELS_TORCH_RUNTIME_H_
