// Structural validation of a RolloutRequest at the scheduler's front door, before anything is
// queued. Model-specific rules (e.g. SANA-WM's 24k+1 frame counts) are the worker's; whether
// the model exists is the scheduler's.
#ifndef WMSERVE_SERVER_REQUEST_VALIDATION_H_
#define WMSERVE_SERVER_REQUEST_VALIDATION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "wmserve/v1/rollout.pb.h"

namespace wmserve::server {

struct RequestLimits {
  uint32_t max_frames = 4096;
  uint64_t max_image_bytes = 32ull << 20;
  uint32_t max_width = 3840;
  uint32_t max_height = 2160;
  double max_fps = 240;
  // Tolerance on R^T R = I and det(R) = 1 for the pose rotation block.
  double rotation_tolerance = 1e-3;
};

// OK, or INVALID_ARGUMENT naming the field and the rule, e.g.
//   "trajectory.poses[3].c2w: rotation is not orthonormal (|R^T R - I| = 0.2 > 0.001)".
// Checks: model name non-empty; image non-empty and <= max_image_bytes; num_frames in
// [1, max_frames]; fps finite in (0, max_fps]; poses.size() == num_frames; every c2w has 16
// finite values, an orthonormal rotation with det +1 and last row (0,0,0,1); intrinsics count
// is 1 or num_frames, all finite, fx, fy > 0; output width/height both 0 or both even and within
// limits; crf <= 51; known container/codec/quality enum values; client_request_id <= 128 bytes.
// Does not decode the image (the caller does that with media::DecodeImage).
absl::Status ValidateRolloutRequest(const v1::RolloutRequest& request,
                                    const RequestLimits& limits = {});

}  // namespace wmserve::server

#endif  // WMSERVE_SERVER_REQUEST_VALIDATION_H_
