// File: what the model benches (sana_bench, ltx2_vae_bench, ltx2_refiner_bench, pipeline_bench)
// share: flag parsing, device selection, synchronisation and peak-memory readings.
//
// Header-only, LibTorch and the standard library; the including target defines
// WMSERVE_WITH_CUDA (1 against a CUDA LibTorch, 0 otherwise). Memory: the CUDA caching
// allocator's counters on a GPU (allocated bytes, aggregate pool), the process RSS on the CPU.
#ifndef WMSERVE_WORKER_MODELS_BENCH_SUPPORT_H_
#define WMSERVE_WORKER_MODELS_BENCH_SUPPORT_H_

#include <ATen/ops/zeros.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#if WMSERVE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace wmserve::worker::bench {

// `value` of `flag` as an integer >= min (std::invalid_argument otherwise).
inline int ParseInt(const std::string& flag, const std::string& value, int min) {
  try {
    size_t used = 0;
    const int v = std::stoi(value, &used);
    if (used == value.size() && v >= min) return v;
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(flag + ": expected an integer >= " + std::to_string(min) +
                              ", got '" + value + "'");
}

inline c10::ScalarType ParseDtype(const std::string& s) {
  if (s == "fp32") return c10::ScalarType::Float;
  if (s == "bf16") return c10::ScalarType::BFloat16;
  if (s == "fp16") return c10::ScalarType::Half;
  throw std::invalid_argument("--dtype: expected fp32, bf16 or fp16, got '" + s + "'");
}

// "cpu" or "cuda[:N]" as a device with an index (cuda:0 for "cuda"), checked to exist. The CUDA
// allocator is initialised, so its statistics can be read at once.
inline c10::Device ResolveDevice(const std::string& name) {
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(name);
  } catch (const c10::Error&) {
    throw std::invalid_argument("--device: expected cpu or cuda[:N], got '" + name + "'");
  }
  if (!device.is_cpu() && !device.is_cuda()) {
    throw std::invalid_argument("--device: expected cpu or cuda[:N], got '" + name + "'");
  }
  if (device.is_cuda()) {
    if (!torch::cuda::is_available()) {
      throw std::runtime_error("--device " + name +
                               ": no CUDA device (LibTorch without CUDA, or no GPU visible)");
    }
    if (!device.has_index()) device = c10::Device(c10::kCUDA, 0);
    if (device.index() >= static_cast<int>(torch::cuda::device_count())) {
      throw std::runtime_error("--device " + name + ": only " +
                               std::to_string(static_cast<int>(torch::cuda::device_count())) +
                               " CUDA device(s)");
    }
    (void)at::zeros({1}, at::TensorOptions().device(device));
  }
  return device;
}

inline void Sync(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// A "Key:   1234 kB" line of /proc/self/status, in bytes (0 if unavailable).
inline int64_t ProcStatusBytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream s(line.substr(key.size() + 1));
      int64_t kb = 0;
      s >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

// Resets the peak counter and returns the current usage.
inline int64_t ResetPeakMemory(const c10::Device& device) {
#if WMSERVE_WITH_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<int64_t>(stats.allocated_bytes[0].current);  // [0]: aggregate pool
  }
#else
  (void)device;
#endif
  std::ofstream("/proc/self/clear_refs") << "5";  // Linux >= 4.0: VmHWM := VmRSS
  return ProcStatusBytes("VmRSS");
}

// Usage now (allocated bytes on a GPU, RSS on the CPU).
inline int64_t CurrentMemory(const c10::Device& device) {
#if WMSERVE_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<int64_t>(stats.allocated_bytes[0].current);
  }
#else
  (void)device;
#endif
  return ProcStatusBytes("VmRSS");
}

// The peak since the last reset.
inline int64_t PeakMemory(const c10::Device& device) {
#if WMSERVE_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<int64_t>(stats.allocated_bytes[0].peak);
  }
#else
  (void)device;
#endif
  return ProcStatusBytes("VmHWM");
}

// What PeakMemory measures: "cuda alloc" or "rss".
inline const char* MemoryKind(const c10::Device& device) {
  return device.is_cuda() ? "cuda alloc" : "rss";
}

inline std::string DeviceDescription(const c10::Device& device) {
  std::ostringstream s;
  s << device;
#if WMSERVE_WITH_CUDA
  if (device.is_cuda()) {
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(device.index());
    s << " (" << p->name << ", " << p->totalGlobalMem / (1024.0 * 1024.0 * 1024.0) << " GiB, sm_"
      << p->major << p->minor << ")";
  }
#endif
  return s.str();
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace wmserve::worker::bench

#endif  // WMSERVE_WORKER_MODELS_BENCH_SUPPORT_H_
