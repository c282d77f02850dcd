#include "worker/models/torch_runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/version.h>

#if WMSERVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>
#endif

namespace wmserve::worker {

void SetTorchThreads(int threads) {
  if (threads > 0) at::set_num_threads(threads);
}

int GetTorchThreads() { return at::get_num_threads(); }

void InitTorchThread() { at::init_num_threads(); }

std::string TorchDescription() {
  return std::string("torch ") + TORCH_VERSION + (at::hasCUDA() ? " (cuda)" : " (cpu)");
}

#if WMSERVE_WITH_CUDA
CudaAllocatorStats GetCudaAllocatorStats(int device) {
  CudaAllocatorStats out;
  if (device < 0 || device >= static_cast<int>(c10::cuda::device_count())) return out;
  // Index 0 of each stat array is the aggregate over pool types in every LibTorch version we
  // build against (1.13: StatType::AGGREGATE; 2.x: the same enumerator, moved namespace).
  // Before the process's first CUDA allocation the allocator has no per-device state and
  // throws ("Invalid device argument"); report "not available" until then.
  try {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
    out.available = true;
    out.allocated_bytes = static_cast<uint64_t>(stats.allocated_bytes[0].current);
    out.reserved_bytes = static_cast<uint64_t>(stats.reserved_bytes[0].current);
    out.peak_allocated_bytes = static_cast<uint64_t>(stats.allocated_bytes[0].peak);
  } catch (const c10::Error&) {
    out = CudaAllocatorStats();
  }
  return out;
}

void ResetCudaPeak(int device) {
  if (device < 0 || device >= static_cast<int>(c10::cuda::device_count())) return;
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device);
  } catch (const c10::Error&) {
    // Not initialised yet: nothing to reset.
  }
}
#else
CudaAllocatorStats GetCudaAllocatorStats(int) { return {}; }
void ResetCudaPeak(int) {}
#endif

}  // namespace wmserve::worker
