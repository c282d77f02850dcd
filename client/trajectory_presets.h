// Generators for simple camera trajectories (wmctl trajectory ...), used for demos and tests.
//
// All presets produce camera-to-world poses in OpenCV axes (+x right, +y down, +z forward) with
// frame 0 = identity, interpolated linearly in angle or distance from 0 at frame 0 to the total
// at frame N-1, plus one intrinsics set shared by all frames:
//   fx = fy = (width / 2) / tan(hfov / 2), cx = width / 2, cy = height / 2.
//
//   yaw      rotate in place about the camera's +y (down) axis by `degrees` (default 30).
//            Positive degrees turns the camera to the RIGHT (its forward axis swings toward +x),
//            so the image content moves LEFT.
//   pan      translate along +x (right) by `meters` (default 1), no rotation.
//   forward  translate along +z (forward) by `meters` (default 2), no rotation.
//   orbit    move on a horizontal circle of radius `meters` (default 3) around the point
//            `meters` in front of frame 0's camera, by `degrees` (default 90) of arc, always
//            looking at that point. Positive degrees turns the camera's heading the same way as
//            a positive yaw (right), which moves it to its LEFT along the circle.
#ifndef WMSERVE_CLIENT_TRAJECTORY_PRESETS_H_
#define WMSERVE_CLIENT_TRAJECTORY_PRESETS_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "wmserve/v1/rollout.pb.h"

namespace wmserve::client {

enum class TrajectoryPreset { kYaw, kPan, kForward, kOrbit };

// "yaw" | "pan" | "forward" | "orbit"; INVALID_ARGUMENT otherwise.
absl::StatusOr<TrajectoryPreset> ParseTrajectoryPreset(absl::string_view name);
const char* TrajectoryPresetName(TrajectoryPreset preset);

struct PresetOptions {
  int frames = 0;  // Required, >= 1.
  double fps = 16;
  // Unset = the preset's default. Setting one the preset does not use (degrees for pan/forward,
  // meters for yaw) is INVALID_ARGUMENT rather than silently ignored.
  std::optional<double> degrees;
  std::optional<double> meters;
  int image_width = 1280;
  int image_height = 704;
  double hfov_degrees = 60;
};

// The TrajectoryFile for `preset`, with fps and image_width/height set. INVALID_ARGUMENT names
// the bad option ("frames: must be >= 1 (got 0)").
absl::StatusOr<v1::TrajectoryFile> MakePresetTrajectory(TrajectoryPreset preset,
                                                        const PresetOptions& options);

}  // namespace wmserve::client

#endif  // WMSERVE_CLIENT_TRAJECTORY_PRESETS_H_
