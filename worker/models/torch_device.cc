#include "worker/models/torch_device.h"

#include <torch/cuda.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace wmserve::worker {

absl::StatusOr<c10::Device> ParseTorchDevice(const std::string& device, bool check_present) {
  if (device == "cpu") return c10::Device(c10::kCPU);
  constexpr char kCudaPrefix[] = "cuda:";
  const size_t prefix_len = sizeof(kCudaPrefix) - 1;
  const std::string index_text =
      device.compare(0, prefix_len, kCudaPrefix) == 0 ? device.substr(prefix_len) : "";
  // Digits only (no sign, no spaces), and short enough to rule out overflow.
  const bool well_formed = !index_text.empty() && index_text.size() <= 3 &&
                           std::all_of(index_text.begin(), index_text.end(),
                                       [](char ch) { return ch >= '0' && ch <= '9'; });
  if (!well_formed) {
    return absl::InvalidArgumentError(
        absl::StrCat("device \"", device, "\": expected \"cpu\" or \"cuda:N\""));
  }
  const int index = std::stoi(index_text);
  if (check_present) {
    // device_count()'s return type differs across LibTorch versions (size_t, DeviceIndex).
    const int64_t count =
        torch::cuda::is_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
    if (index >= count) {
      return absl::UnavailableError(
          absl::StrCat("device ", device, ": not available (", count, " CUDA devices)"));
    }
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace wmserve::worker
