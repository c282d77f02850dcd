// Samples a worker's device memory for the `wmserve_gpu_memory_bytes{gpu,UUID,pool}` gauges.
//
// CUDA devices: LibTorch's caching allocator (allocated, reserved, peak) plus NVML (total, free),
// with NVML loaded at run time (dlopen "libnvidia-ml.so.1"), so the worker builds and runs
// without it; `gpu` is the NVML index and `UUID` the NVML UUID ("GPU-…"), spelled as
// dcgm-exporter spells them so PromQL joins with DCGM_FI_DEV_* series work. CPU devices report
// gpu="cpu", UUID="CPU-<hostname>" and the process/host memory instead. Torch-free.
#ifndef WMSERVE_WORKER_DEVICE_MEMORY_H_
#define WMSERVE_WORKER_DEVICE_MEMORY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace wmserve::worker {

struct MemorySample {
  std::vector<std::pair<std::string, uint64_t>> pools;  // pool name -> bytes
};

class DeviceMemoryProbe {
 public:
  // Never fails: a missing NVML or CUDA just means fewer pools.
  static std::unique_ptr<DeviceMemoryProbe> Create(const std::string& device);
  virtual ~DeviceMemoryProbe() = default;

  virtual const std::string& gpu() const = 0;
  virtual const std::string& uuid() const = 0;
  virtual bool is_cuda() const = 0;
  // Current pools; `weights_bytes` and `rollout_state_bytes` are the models' own accounting.
  virtual MemorySample Sample(uint64_t weights_bytes, uint64_t rollout_state_bytes) = 0;
  // Peak allocated bytes since the previous call (and resets the peak); CUDA only.
  virtual std::optional<uint64_t> TakePeakAllocated() = 0;
};

// Process resident set size, bytes (Linux /proc/self/statm).
uint64_t ProcessResidentBytes();
uint64_t HostTotalBytes();
uint64_t HostAvailableBytes();

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_DEVICE_MEMORY_H_
