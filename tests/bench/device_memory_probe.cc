// Prints what a worker would export as wmserve_gpu_memory_bytes{gpu,UUID,pool} for a device,
// before and after allocating a tensor there. Checks on a real GPU that the LibTorch allocator
// statistics and NVML (loaded at run time) are read, and that the labels look like
// dcgm-exporter's (gpu="0", UUID="GPU-…").
//
//   device_memory_probe [cpu|cuda:N] [MiB to allocate]
#include <ATen/ops/empty.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "worker/device_memory.h"

int main(int argc, char** argv) {
  const std::string device = argc > 1 ? argv[1] : "cpu";
  const long mib = argc > 2 ? std::atol(argv[2]) : 1024;
  auto probe = wmserve::worker::DeviceMemoryProbe::Create(device);
  auto print = [&](const char* when) {
    for (const auto& [pool, bytes] : probe->Sample(/*weights=*/0, /*rollout_state=*/0).pools) {
      std::printf("%s wmserve_gpu_memory_bytes{gpu=\"%s\",UUID=\"%s\",pool=\"%s\"} %llu\n", when,
                  probe->gpu().c_str(), probe->uuid().c_str(), pool.c_str(),
                  static_cast<unsigned long long>(bytes));
    }
  };
  print("before");
  at::Tensor t = at::empty({mib << 20}, at::TensorOptions().dtype(at::kByte).device(device));
  t.fill_(1);
  print("after ");
  if (auto peak = probe->TakePeakAllocated()) {
    std::printf("peak allocated since start: %llu bytes\n", static_cast<unsigned long long>(*peak));
  }
  return 0;
}
