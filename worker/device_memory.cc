#include "worker/device_memory.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <fstream>
#include <vector>

#include "worker/models/torch_runtime.h"

namespace wmserve::worker {

uint64_t ProcessResidentBytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

uint64_t HostTotalBytes() {
  return static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
         static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

uint64_t HostAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kb = 0;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

namespace {

std::string HostName() {
  char buf[256] = {0};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

class CpuProbe : public DeviceMemoryProbe {
 public:
  CpuProbe() : uuid_("CPU-" + HostName()) {}
  const std::string& gpu() const override { return gpu_; }
  const std::string& uuid() const override { return uuid_; }
  bool is_cuda() const override { return false; }
  MemorySample Sample(uint64_t, uint64_t) override {
    return {{{"process_resident", ProcessResidentBytes()},
             {"host_total", HostTotalBytes()},
             {"host_available", HostAvailableBytes()}}};
  }
  std::optional<uint64_t> TakePeakAllocated() override { return std::nullopt; }

 private:
  const std::string gpu_ = "cpu";
  const std::string uuid_;
};

// The few NVML entry points we need, resolved with dlsym. Types follow nvml.h's ABI.
struct Nvml {
  using Device = void*;
  struct Memory {
    unsigned long long total, free, used;
  };
  int (*init)() = nullptr;
  int (*handle_by_index)(unsigned, Device*) = nullptr;
  int (*uuid)(Device, char*, unsigned) = nullptr;
  int (*memory)(Device, Memory*) = nullptr;
  void* lib = nullptr;

  bool Load() {
    lib = ::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return false;
    init = reinterpret_cast<int (*)()>(::dlsym(lib, "nvmlInit_v2"));
    handle_by_index =
        reinterpret_cast<int (*)(unsigned, Device*)>(::dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
    uuid = reinterpret_cast<int (*)(Device, char*, unsigned)>(::dlsym(lib, "nvmlDeviceGetUUID"));
    memory = reinterpret_cast<int (*)(Device, Memory*)>(::dlsym(lib, "nvmlDeviceGetMemoryInfo"));
    return init && handle_by_index && uuid && memory && init() == 0;
  }
};

// Non-negative decimal integer, or -1. (Standard library only: this file also builds in the
// LibTorch-only GPU build.)
int ParseIndex(const std::string& text) {
  if (text.empty() || text.size() > 6) return -1;
  int n = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return -1;
    n = n * 10 + (c - '0');
  }
  return n;
}

// CUDA ordinal -> NVML index, honouring a numeric CUDA_VISIBLE_DEVICES list.
unsigned NvmlIndexFor(int cuda_index) {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (visible == nullptr || *visible == '\0') return static_cast<unsigned>(cuda_index);
  std::vector<std::string> ids;
  std::string current;
  for (const char* p = visible;; ++p) {
    if (*p == ',' || *p == '\0') {
      ids.push_back(current);
      current.clear();
      if (*p == '\0') break;
    } else {
      current += *p;
    }
  }
  if (cuda_index < static_cast<int>(ids.size())) {
    const int n = ParseIndex(ids[cuda_index]);
    if (n >= 0) return static_cast<unsigned>(n);
  }
  return static_cast<unsigned>(cuda_index);
}

class CudaProbe : public DeviceMemoryProbe {
 public:
  explicit CudaProbe(int cuda_index) : cuda_index_(cuda_index) {
    const unsigned nvml_index = NvmlIndexFor(cuda_index);
    gpu_ = std::to_string(nvml_index);
    uuid_ = "GPU-unknown";
    if (nvml_.Load() && nvml_.handle_by_index(nvml_index, &device_) == 0) {
      char buf[96] = {0};
      if (nvml_.uuid(device_, buf, sizeof(buf)) == 0) uuid_ = buf;
      nvml_ok_ = true;
    }
  }
  const std::string& gpu() const override { return gpu_; }
  const std::string& uuid() const override { return uuid_; }
  bool is_cuda() const override { return true; }

  MemorySample Sample(uint64_t weights_bytes, uint64_t rollout_state_bytes) override {
    MemorySample s;
    s.pools.push_back({"weights", weights_bytes});
    s.pools.push_back({"rollout_state", rollout_state_bytes});
    const CudaAllocatorStats a = GetCudaAllocatorStats(cuda_index_);
    if (a.available) {
      s.pools.push_back({"allocated", a.allocated_bytes});
      s.pools.push_back({"reserved", a.reserved_bytes});
    }
    Nvml::Memory m{};
    if (nvml_ok_ && nvml_.memory(device_, &m) == 0) {
      s.pools.push_back({"free", m.free});
      s.pools.push_back({"total", m.total});
    }
    return s;
  }

  std::optional<uint64_t> TakePeakAllocated() override {
    const CudaAllocatorStats a = GetCudaAllocatorStats(cuda_index_);
    if (!a.available) return std::nullopt;
    ResetCudaPeak(cuda_index_);
    return a.peak_allocated_bytes;
  }

 private:
  const int cuda_index_;
  std::string gpu_, uuid_;
  Nvml nvml_;
  Nvml::Device device_ = nullptr;
  bool nvml_ok_ = false;
};

}  // namespace

std::unique_ptr<DeviceMemoryProbe> DeviceMemoryProbe::Create(const std::string& device) {
  if (device.rfind("cuda:", 0) == 0) {
    const int index = ParseIndex(device.substr(5));
    if (index >= 0) return std::make_unique<CudaProbe>(index);
  }
  return std::make_unique<CpuProbe>();
}

}  // namespace wmserve::worker
