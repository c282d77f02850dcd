// Reading and writing the on-disk TrajectoryFile (rollout.proto), stored as its proto3 JSON
// mapping so people can write trajectories by hand or generate them from any language.
#ifndef WMSERVE_CLIENT_TRAJECTORY_FILE_H_
#define WMSERVE_CLIENT_TRAJECTORY_FILE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "wmserve/v1/rollout.pb.h"

namespace wmserve::client {

// Parses TrajectoryFile JSON text. Field names may be lowerCamelCase (`imageWidth`) or the proto
// names (`image_width`). Unknown fields are INVALID_ARGUMENT rather than ignored, because a
// misspelt field (e.g. "intrinsic") would otherwise silently fall back to a default.
// `source` names the origin in error messages ("traj.json: invalid trajectory JSON: ...").
absl::StatusOr<v1::TrajectoryFile> ParseTrajectoryJson(absl::string_view json,
                                                       absl::string_view source = "trajectory");

// Serialises to pretty-printed proto3 JSON (lowerCamelCase names, every scalar printed even when
// zero so the file shows all the knobs), ending with a newline.
absl::StatusOr<std::string> TrajectoryToJson(const v1::TrajectoryFile& file);

// NOT_FOUND if `path` does not exist, other I/O failures as their errno category, and
// INVALID_ARGUMENT for malformed JSON or unknown fields. Messages start with the path.
absl::StatusOr<v1::TrajectoryFile> ReadTrajectoryFile(const std::string& path);

// Writes (truncating) `path`.
absl::Status WriteTrajectoryFile(const std::string& path, const v1::TrajectoryFile& file);

// Intrinsics in the file refer to an image of image_width x image_height. When that size is
// known (both non-zero) and differs from the rollout image's `image_w` x `image_h`, scales
// fx, cx by image_w / image_width and fy, cy by image_h / image_height, then records the new
// size in the file so a second call is a no-op. Otherwise (size unknown or equal, or a
// non-positive image size) leaves the file unchanged.
void ScaleIntrinsicsToImage(v1::TrajectoryFile& file, int image_w, int image_h);

}  // namespace wmserve::client

#endif  // WMSERVE_CLIENT_TRAJECTORY_FILE_H_
