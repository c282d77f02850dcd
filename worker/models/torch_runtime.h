// Process-wide LibTorch settings, behind a torch-free header so worker_main needs no torch.
#ifndef WMSERVE_WORKER_MODELS_TORCH_RUNTIME_H_
#define WMSERVE_WORKER_MODELS_TORCH_RUNTIME_H_

#include <string>

namespace wmserve::worker {

// Intra-op threads for CPU kernels; <= 0 keeps LibTorch's default.
void SetTorchThreads(int threads);
int GetTorchThreads();
// "torch 1.13.0 (cpu)" etc., for logs and build info.
std::string TorchDescription();

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_MODELS_TORCH_RUNTIME_H_
