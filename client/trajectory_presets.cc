#include "client/trajectory_presets.h"

#include <array>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace wmserve::client {
namespace {

constexpr double kPi = 3.14159265358979323846;

struct PresetDefaults {
  bool uses_degrees;
  bool uses_meters;
  double degrees;
  double meters;
};

PresetDefaults DefaultsFor(TrajectoryPreset preset) {
  switch (preset) {
    case TrajectoryPreset::kYaw:
      return {true, false, 30, 0};
    case TrajectoryPreset::kPan:
      return {false, true, 0, 1};
    case TrajectoryPreset::kForward:
      return {false, true, 0, 2};
    case TrajectoryPreset::kOrbit:
      return {true, true, 90, 3};
  }
  return {false, false, 0, 0};
}

// Row-major 4x4 camera-to-world transform.
using Matrix4 = std::array<double, 16>;

// Rotation by `radians` about the +y axis, placed at `position`. With OpenCV axes (+y down) a
// positive angle swings +z (forward) toward +x (right): forward = (sin, 0, cos).
Matrix4 YawPose(double radians, double x, double y, double z) {
  const double c = std::cos(radians);
  const double s = std::sin(radians);
  return {c,  0, s, x,  //
          0,  1, 0, y,  //
          -s, 0, c, z,  //
          0,  0, 0, 1};
}

void AppendPose(const Matrix4& m, v1::CameraTrajectory* trajectory) {
  v1::Pose* pose = trajectory->add_poses();
  for (double value : m) {
    // Fold -0.0 into 0.0 so files read naturally ("0", not "-0").
    pose->add_c2w(value == 0 ? 0.0 : value);
  }
}

absl::Status CheckPositiveFinite(absl::string_view name, double value) {
  if (!std::isfinite(value) || value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: must be a finite number > 0 (got %g)", name, value));
  }
  return absl::OkStatus();
}

absl::Status ValidateOptions(TrajectoryPreset preset, const PresetOptions& options) {
  const char* name = TrajectoryPresetName(preset);
  const PresetDefaults defaults = DefaultsFor(preset);
  if (options.frames < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("frames: must be >= 1 (got %d)", options.frames));
  }
  if (options.image_width <= 0 || options.image_height <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("width/height: must be > 0 (got %dx%d)",
                                                      options.image_width, options.image_height));
  }
  absl::Status status = CheckPositiveFinite("fps", options.fps);
  if (!status.ok()) return status;
  if (!std::isfinite(options.hfov_degrees) || options.hfov_degrees <= 0 ||
      options.hfov_degrees >= 180) {
    return absl::InvalidArgumentError(
        absl::StrFormat("hfov: must be in (0, 180) degrees (got %g)", options.hfov_degrees));
  }
  if (options.degrees.has_value()) {
    if (!defaults.uses_degrees) {
      return absl::InvalidArgumentError(
          absl::StrCat("degrees: not used by the ", name, " preset (use meters)"));
    }
    if (!std::isfinite(*options.degrees)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("degrees: must be finite (got %g)", *options.degrees));
    }
  }
  if (options.meters.has_value()) {
    if (!defaults.uses_meters) {
      return absl::InvalidArgumentError(
          absl::StrCat("meters: not used by the ", name, " preset (use degrees)"));
    }
    if (preset == TrajectoryPreset::kOrbit) return CheckPositiveFinite("meters", *options.meters);
    if (!std::isfinite(*options.meters)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("meters: must be finite (got %g)", *options.meters));
    }
  }
  return absl::OkStatus();
}

// Pose of frame i given its fraction `t` in [0, 1] of the way to the preset's total motion.
Matrix4 PresetPose(TrajectoryPreset preset, double t, double degrees, double meters) {
  const double radians = degrees * kPi / 180 * t;
  switch (preset) {
    case TrajectoryPreset::kYaw:
      return YawPose(radians, 0, 0, 0);
    case TrajectoryPreset::kPan:
      return YawPose(0, meters * t, 0, 0);
    case TrajectoryPreset::kForward:
      return YawPose(0, 0, 0, meters * t);
    case TrajectoryPreset::kOrbit: {
      // Target at (0, 0, r). Camera = target - r * forward, forward = (sin, 0, cos), so it always
      // faces the target and sits at the origin for t = 0.
      const double r = meters;
      return YawPose(radians, -r * std::sin(radians), 0, r - r * std::cos(radians));
    }
  }
  return YawPose(0, 0, 0, 0);
}

}  // namespace

absl::StatusOr<TrajectoryPreset> ParseTrajectoryPreset(absl::string_view name) {
  for (TrajectoryPreset preset : {TrajectoryPreset::kYaw, TrajectoryPreset::kPan,
                                  TrajectoryPreset::kForward, TrajectoryPreset::kOrbit}) {
    if (name == TrajectoryPresetName(preset)) return preset;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown trajectory preset \"", name,
                                                 "\" (expected yaw, pan, forward or orbit)"));
}

const char* TrajectoryPresetName(TrajectoryPreset preset) {
  switch (preset) {
    case TrajectoryPreset::kYaw:
      return "yaw";
    case TrajectoryPreset::kPan:
      return "pan";
    case TrajectoryPreset::kForward:
      return "forward";
    case TrajectoryPreset::kOrbit:
      return "orbit";
  }
  return "unknown";
}

absl::StatusOr<v1::TrajectoryFile> MakePresetTrajectory(TrajectoryPreset preset,
                                                        const PresetOptions& options) {
  absl::Status status = ValidateOptions(preset, options);
  if (!status.ok()) return status;
  const PresetDefaults defaults = DefaultsFor(preset);
  const double degrees = options.degrees.value_or(defaults.degrees);
  const double meters = options.meters.value_or(defaults.meters);

  v1::TrajectoryFile file;
  file.set_fps(options.fps);
  file.set_image_width(options.image_width);
  file.set_image_height(options.image_height);
  v1::CameraTrajectory* trajectory = file.mutable_trajectory();
  for (int i = 0; i < options.frames; ++i) {
    const double t = options.frames > 1 ? static_cast<double>(i) / (options.frames - 1) : 0.0;
    AppendPose(PresetPose(preset, t, degrees, meters), trajectory);
  }
  const double half_fov = options.hfov_degrees * kPi / 180 / 2;
  const double focal = (options.image_width / 2.0) / std::tan(half_fov);
  v1::Intrinsics* k = trajectory->add_intrinsics();
  k->set_fx(focal);
  k->set_fy(focal);
  k->set_cx(options.image_width / 2.0);
  k->set_cy(options.image_height / 2.0);
  return file;
}

}  // namespace wmserve::client
