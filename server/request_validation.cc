#include "server/request_validation.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace wmserve::server {
namespace {

constexpr size_t kMaxClientRequestIdBytes = 128;
constexpr uint32_t kMaxCrf = 51;
constexpr int kC2wValues = 16;

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

// "NaN" / "infinite" for a value known not to be finite; used in messages only.
const char* NonFiniteKind(double value) { return std::isnan(value) ? "NaN" : "infinite"; }

absl::Status ValidateModelAndImage(const v1::RolloutRequest& request, const RequestLimits& limits) {
  if (request.model().empty()) return Invalid("model", "must not be empty");
  if (request.image().empty()) return Invalid("image", "must not be empty");
  if (request.image().size() > limits.max_image_bytes) {
    return Invalid("image", absl::StrFormat("%d bytes exceeds the %d-byte limit",
                                            request.image().size(), limits.max_image_bytes));
  }
  return absl::OkStatus();
}

absl::Status ValidateFramesAndFps(const v1::RolloutRequest& request, const RequestLimits& limits) {
  if (request.num_frames() < 1) return Invalid("num_frames", "must be >= 1");
  if (request.num_frames() > limits.max_frames) {
    return Invalid("num_frames", absl::StrFormat("%d exceeds the limit of %d", request.num_frames(),
                                                 limits.max_frames));
  }
  const double fps = request.fps();
  if (!std::isfinite(fps)) {
    return Invalid("fps", absl::StrFormat("must be finite (got %g)", fps));
  }
  if (fps <= 0) return Invalid("fps", absl::StrFormat("must be > 0 (got %g)", fps));
  if (fps > limits.max_fps) {
    return Invalid("fps", absl::StrFormat("must be <= %g (got %g)", limits.max_fps, fps));
  }
  return absl::OkStatus();
}

// Element (row, col) of a row-major 4x4 matrix stored as 16 values.
double At(const v1::Pose& pose, int row, int col) { return pose.c2w(row * 4 + col); }

// Largest absolute entry of R^T R - I for the upper-left 3x3 block.
double OrthonormalityError(const v1::Pose& pose) {
  double max_error = 0;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      double dot = 0;
      for (int k = 0; k < 3; ++k) dot += At(pose, k, i) * At(pose, k, j);
      max_error = std::max(max_error, std::abs(dot - (i == j ? 1.0 : 0.0)));
    }
  }
  return max_error;
}

double RotationDeterminant(const v1::Pose& pose) {
  auto r = [&pose](int row, int col) { return At(pose, row, col); };
  return r(0, 0) * (r(1, 1) * r(2, 2) - r(1, 2) * r(2, 1)) -
         r(0, 1) * (r(1, 0) * r(2, 2) - r(1, 2) * r(2, 0)) +
         r(0, 2) * (r(1, 0) * r(2, 1) - r(1, 1) * r(2, 0));
}

absl::Status ValidatePose(const v1::Pose& pose, int index, const RequestLimits& limits) {
  const std::string field = absl::StrCat("trajectory.poses[", index, "].c2w");
  if (pose.c2w_size() != kC2wValues) {
    return Invalid(
        field, absl::StrFormat("has %d values (need 16, a row-major 4x4 matrix)", pose.c2w_size()));
  }
  for (int i = 0; i < kC2wValues; ++i) {
    if (!std::isfinite(pose.c2w(i))) {
      return Invalid(field, absl::StrFormat("value %d is %s", i, NonFiniteKind(pose.c2w(i))));
    }
  }
  // Exact comparison on purpose: the last row of a rigid transform is a constant, not a result
  // of arithmetic, so any deviation means the matrix is not what the contract describes.
  if (At(pose, 3, 0) != 0 || At(pose, 3, 1) != 0 || At(pose, 3, 2) != 0 || At(pose, 3, 3) != 1) {
    return Invalid(field,
                   absl::StrFormat("last row must be 0 0 0 1 (got %g %g %g %g)", At(pose, 3, 0),
                                   At(pose, 3, 1), At(pose, 3, 2), At(pose, 3, 3)));
  }
  const double ortho_error = OrthonormalityError(pose);
  if (ortho_error > limits.rotation_tolerance) {
    return Invalid(field, absl::StrFormat("rotation is not orthonormal (max |R^T R - I| = %g > %g)",
                                          ortho_error, limits.rotation_tolerance));
  }
  const double det = RotationDeterminant(pose);
  if (det < 0) {
    return Invalid(field, absl::StrFormat("rotation has determinant %g (reflection)", det));
  }
  if (std::abs(det - 1) > limits.rotation_tolerance) {
    return Invalid(field, absl::StrFormat("rotation has determinant %g (need +1)", det));
  }
  return absl::OkStatus();
}

absl::Status ValidateIntrinsicsValue(absl::string_view field, double value, bool positive) {
  if (!std::isfinite(value)) {
    return Invalid(field, absl::StrFormat("must be finite (got %g)", value));
  }
  if (positive && value <= 0) return Invalid(field, absl::StrFormat("must be > 0 (got %g)", value));
  return absl::OkStatus();
}

absl::Status ValidateIntrinsics(const v1::Intrinsics& intrinsics, int index) {
  const std::string prefix = absl::StrCat("trajectory.intrinsics[", index, "].");
  struct Entry {
    const char* name;
    double value;
    bool positive;
  };
  const Entry entries[] = {{"fx", intrinsics.fx(), true},
                           {"fy", intrinsics.fy(), true},
                           {"cx", intrinsics.cx(), false},
                           {"cy", intrinsics.cy(), false}};
  for (const Entry& entry : entries) {
    absl::Status status =
        ValidateIntrinsicsValue(absl::StrCat(prefix, entry.name), entry.value, entry.positive);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ValidateTrajectory(const v1::RolloutRequest& request, const RequestLimits& limits) {
  const v1::CameraTrajectory& trajectory = request.trajectory();
  const uint32_t frames = request.num_frames();
  if (static_cast<uint32_t>(trajectory.poses_size()) != frames) {
    return Invalid("trajectory.poses",
                   absl::StrFormat("%d poses for num_frames=%d (need one per frame)",
                                   trajectory.poses_size(), frames));
  }
  for (int i = 0; i < trajectory.poses_size(); ++i) {
    absl::Status status = ValidatePose(trajectory.poses(i), i, limits);
    if (!status.ok()) return status;
  }
  const uint32_t sets = static_cast<uint32_t>(trajectory.intrinsics_size());
  if (sets != 1 && sets != frames) {
    const std::string need = frames == 1 ? "1" : absl::StrCat("1 or ", frames);
    return Invalid("trajectory.intrinsics",
                   absl::StrFormat("%d sets for num_frames=%d (need %s)", sets, frames, need));
  }
  for (int i = 0; i < trajectory.intrinsics_size(); ++i) {
    absl::Status status = ValidateIntrinsics(trajectory.intrinsics(i), i);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ValidateOutputSize(const v1::OutputOptions& output, const RequestLimits& limits) {
  const uint32_t w = output.width();
  const uint32_t h = output.height();
  if (w == 0 && h == 0) return absl::OkStatus();  // The model's native size.
  constexpr absl::string_view kField = "output.width/height";
  if (w == 0 || h == 0) {
    return Invalid(kField, absl::StrFormat("set both or neither (got %dx%d)", w, h));
  }
  if (w % 2 != 0 || h % 2 != 0) {
    // H.264 with 4:2:0 chroma subsampling needs even dimensions.
    return Invalid(kField, absl::StrFormat("must be even (got %dx%d)", w, h));
  }
  if (w > limits.max_width || h > limits.max_height) {
    return Invalid(kField, absl::StrFormat("%dx%d exceeds the %dx%d limit", w, h, limits.max_width,
                                           limits.max_height));
  }
  return absl::OkStatus();
}

absl::Status ValidateOutput(const v1::OutputOptions& output, const RequestLimits& limits) {
  // Enum fields are open in proto3: a newer or buggy client can send any integer.
  if (!v1::Container_IsValid(output.container())) {
    return Invalid("output.container", absl::StrCat("unknown value ", output.container()));
  }
  if (!v1::Codec_IsValid(output.codec())) {
    return Invalid("output.codec", absl::StrCat("unknown value ", output.codec()));
  }
  if (!v1::Quality_IsValid(output.quality())) {
    return Invalid("output.quality", absl::StrCat("unknown value ", output.quality()));
  }
  if (output.crf() > kMaxCrf) {
    return Invalid("output.crf", absl::StrFormat("must be <= %d (got %d)", kMaxCrf, output.crf()));
  }
  return ValidateOutputSize(output, limits);
}

}  // namespace

absl::Status ValidateRolloutRequest(const v1::RolloutRequest& request,
                                    const RequestLimits& limits) {
  // Cheap scalar checks first so the message names the most basic problem.
  absl::Status status = ValidateModelAndImage(request, limits);
  if (status.ok()) status = ValidateFramesAndFps(request, limits);
  if (status.ok()) status = ValidateOutput(request.output(), limits);
  if (status.ok() && request.client_request_id().size() > kMaxClientRequestIdBytes) {
    status = Invalid("client_request_id",
                     absl::StrFormat("%d bytes exceeds the %d-byte limit",
                                     request.client_request_id().size(), kMaxClientRequestIdBytes));
  }
  if (status.ok()) status = ValidateTrajectory(request, limits);
  return status;
}

}  // namespace wmserve::server
