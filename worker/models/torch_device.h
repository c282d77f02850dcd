// Device strings of the worker's models ("cpu", "cuda:N") to LibTorch devices.
#ifndef WMSERVE_WORKER_MODELS_TORCH_DEVICE_H_
#define WMSERVE_WORKER_MODELS_TORCH_DEVICE_H_

#include <c10/core/Device.h>

#include <string>

#include "absl/status/statusor.h"

namespace wmserve::worker {

// "cpu" or "cuda:N" (digits only). INVALID_ARGUMENT for anything else; with `check_present`,
// UNAVAILABLE when that CUDA device does not exist on this machine.
absl::StatusOr<c10::Device> ParseTorchDevice(const std::string& device, bool check_present);

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_MODELS_TORCH_DEVICE_H_
