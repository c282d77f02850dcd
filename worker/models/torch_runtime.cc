#include "worker/models/torch_runtime.h"

#include <ATen/Parallel.h>
#include <ATen/Context.h>
#include <torch/version.h>

namespace wmserve::worker {

void SetTorchThreads(int threads) {
  if (threads > 0) at::set_num_threads(threads);
}

int GetTorchThreads() { return at::get_num_threads(); }

std::string TorchDescription() {
  return std::string("torch ") + TORCH_VERSION + (at::hasCUDA() ? " (cuda)" : " (cpu)");
}

}  // namespace wmserve::worker
