// `warp`: a geometric baseline world model.
//
// Renders the view from each camera pose by inverse-warping the first image under a depth prior:
// the scene is a fronto-parallel plane at depth `depth` metres in front of camera 0 (request
// option "depth", default 2.0). For a pure rotation the result is exact for any scene (the plane
// drops out: it is the homography K_i R^T K_0^-1). Target pixels whose ray misses the plane or
// lands outside the source image are filled by clamping to the source border ("fill": "border",
// default) or with black ("fill": "black").
//
// Stages: image encode = resize + centre crop of the source image to the output size (intrinsics
// remapped the same way) and upload to the device; backbone = per-frame sampling grids;
// decode = grid_sample + conversion to uint8 RGB. Runs on CPU and CUDA (LibTorch grid_sample).
#ifndef WMSERVE_WORKER_MODELS_WARP_MODEL_H_
#define WMSERVE_WORKER_MODELS_WARP_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/model.h"

namespace wmserve::worker {

struct WarpModelConfig {
  std::string device = "cpu";  // "cpu" or "cuda:N"
  int frames_per_chunk = 16;   // frames per streamed chunk (> 0)
};

// INVALID_ARGUMENT for a bad device string; UNAVAILABLE if the device is not present.
absl::StatusOr<std::unique_ptr<Model>> CreateWarpModel(const WarpModelConfig& config);

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_MODELS_WARP_MODEL_H_
