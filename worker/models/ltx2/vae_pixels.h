// File: pixel I/O around the LTX-2 VAE (ltx2-spec §1.2; sana-wm-spec §2, §8): the decoded
// video's conversion to 8-bit RGB. (The conditioning image's resize + centre crop is
// sana::PlanResizeCenterCrop, shared with the intrinsics it must agree with.)
//
// Depends on LibTorch and the C++ standard library only.
#ifndef WMSERVE_WORKER_MODELS_LTX2_VAE_PIXELS_H_
#define WMSERVE_WORKER_MODELS_LTX2_VAE_PIXELS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace wmserve::worker::ltx2 {

// Decoded pixels -> uint8: clamp to [-1, 1], x*127.5 + 127.5, round half to even, in float32
// whatever the input dtype. Same shape and device as `pixels`.
at::Tensor ToUint8Rgb(const at::Tensor& pixels);

// Decoded pixels (B, 3, T, H, W) -> the frames of sample `batch_index` as contiguous uint8
// (T, H, W, 3) on the same device (what a video encoder consumes after `.cpu()`).
// InvalidInputError for another layout or an out-of-range index.
at::Tensor ToUint8Frames(const at::Tensor& pixels, int64_t batch_index = 0);

}  // namespace wmserve::worker::ltx2

#endif  // WMSERVE_WORKER_MODELS_LTX2_VAE_PIXELS_H_
