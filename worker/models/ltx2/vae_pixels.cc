// Pixel I/O around the LTX-2 VAE (see vae_pixels.h).
#include "worker/models/ltx2/vae_pixels.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "worker/models/sana/errors.h"
#include "worker/models/sana/ops.h"

namespace wmserve::worker::ltx2 {
using sana::ShapeOf;

namespace {

using sana::InvalidInputError;

}  // namespace

at::Tensor ToUint8Rgb(const at::Tensor& pixels) {
  if (!pixels.defined() || !pixels.is_floating_point()) {
    throw InvalidInputError("ToUint8Rgb: pixels must be a floating-point tensor");
  }
  c10::NoGradGuard no_grad;
  // float32 even for bf16 input: bf16 cannot hold x*127.5 + 127.5 to the nearest integer.
  return pixels.to(at::kFloat).clamp(-1.0, 1.0).mul_(127.5).add_(127.5).round_().to(at::kByte);
}

at::Tensor ToUint8Frames(const at::Tensor& pixels, int64_t batch_index) {
  if (!pixels.defined() || pixels.dim() != 5 || pixels.size(1) != 3) {
    throw InvalidInputError("ToUint8Frames: pixels has shape " + ShapeOf(pixels) +
                            ", expected (B, 3, T, H, W)");
  }
  if (batch_index < 0 || batch_index >= pixels.size(0)) {
    throw InvalidInputError("ToUint8Frames: batch index " + std::to_string(batch_index) +
                            " is out of range for batch " + std::to_string(pixels.size(0)));
  }
  // Select and permute first so only one sample is converted: (3, T, H, W) -> (T, H, W, 3).
  return ToUint8Rgb(pixels.select(0, batch_index).permute({1, 2, 3, 0})).contiguous();
}

}  // namespace wmserve::worker::ltx2
