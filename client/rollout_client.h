// Client side of RolloutService: builds requests from files and runs the streaming Rollout RPC,
// checking that the event stream obeys the contract. Used by wmctl and the end-to-end tests.
#ifndef WMSERVE_CLIENT_ROLLOUT_CLIENT_H_
#define WMSERVE_CLIENT_ROLLOUT_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "wmserve/v1/rollout.grpc.pb.h"
#include "wmserve/v1/rollout.pb.h"

namespace wmserve::client {

// ----- Requests ------------------------------------------------------------------------------

struct ImageSize {
  int width = 0;
  int height = 0;
};

// Width and height from a PNG IHDR chunk or a JPEG SOFn segment, read from the header only.
// Deliberately independent of media::DecodeImage: the client needs just the size (to scale
// intrinsics), should not pull in FFmpeg decoding for it, and leaves full validation of the
// pixels to the server. INVALID_ARGUMENT if the bytes are neither, or the header is truncated.
absl::StatusOr<ImageSize> ProbeImageSize(absl::string_view bytes);

struct RequestOptions {
  v1::OutputOptions output;  // quality, crf, width/height; defaults = server defaults
  std::map<std::string, std::string> model_options;
  std::string client_request_id;
};

// A request for `model` from the first-frame image at `image_path` and `trajectory`: the
// intrinsics are scaled to the image's size (ScaleIntrinsicsToImage), num_frames is the number
// of poses and fps is the file's. Does not run ValidateRolloutRequest: the server is the
// authority on limits. Errors: the image cannot be read (with its path) or is not PNG/JPEG.
absl::StatusOr<v1::RolloutRequest> BuildRolloutRequest(absl::string_view model,
                                                       const std::string& image_path,
                                                       v1::TrajectoryFile trajectory, uint64_t seed,
                                                       const RequestOptions& options = {});

// Same, with the image bytes in memory; `image_name` is used in error messages.
absl::StatusOr<v1::RolloutRequest> BuildRolloutRequestFromImage(
    absl::string_view model, std::string image_bytes, v1::TrajectoryFile trajectory, uint64_t seed,
    const RequestOptions& options = {}, absl::string_view image_name = "image");

// ----- Running a rollout ---------------------------------------------------------------------

// Each callback (all optional) runs on the calling thread as its event arrives, after the event
// passed the stream-order checks. A callback may call ClientContext::TryCancel() to stop the
// rollout; RunRollout then returns with status CANCELLED.
struct RolloutCallbacks {
  std::function<void(const v1::Accepted&)> on_accepted;
  std::function<void(const v1::Progress&)> on_progress;
  std::function<void(const v1::StreamInit&)> on_init;
  std::function<void(const v1::VideoChunk&)> on_chunk;
  std::function<void(const v1::Final&)> on_final;
  // When false, RolloutResult keeps no media bytes (video_bytes empty, chunk data cleared), for
  // callers that write chunks out as they arrive and may run very long rollouts.
  bool keep_video_bytes = true;
};

struct RolloutResult {
  std::string rollout_id;       // from Accepted; empty if none arrived
  uint32_t queue_position = 0;  // from Accepted
  bool accepted = false;
  bool got_init = false;
  bool got_final = false;
  v1::StreamInit init;                 // including init_segment
  std::vector<v1::VideoChunk> chunks;  // in order; data kept only with keep_video_bytes
  v1::Final final;
  v1::Progress last_progress;
  int progress_events = 0;
  // init_segment followed by every chunk's data: a complete fragmented MP4.
  std::string video_bytes;
  // PREVIEW chunks (model_options preview=on), in order, and their own fMP4
  // (preview_init_segment + their data). Empty without previews.
  std::vector<v1::VideoChunk> preview_chunks;
  std::string preview_video_bytes;
  // The RPC's status, except: INTERNAL "stream protocol violation: ..." when the server broke
  // the event order (the call is then cancelled), and INTERNAL "stream ended without Final" when
  // the server returned OK early. OK means a complete, well-formed stream.
  grpc::Status status;

  bool ok() const { return status.ok(); }
};

// Runs the Rollout RPC to completion on `ctx` (which the caller owns, so it can set a deadline
// or cancel from another thread) and checks the stream: Accepted first and once, StreamInit once
// and before any chunk, chunk indices 0, 1, 2, ... with contiguous frame ranges, nothing after
// Final. Blocks until the stream ends.
RolloutResult RunRollout(v1::RolloutService::Stub& stub, const v1::RolloutRequest& request,
                         const RolloutCallbacks& callbacks, grpc::ClientContext* ctx);

// Attach(rollout_id, from_chunk): continues a rollout after a dropped connection. Same checks as
// RunRollout, except that chunks start at `from_chunk` (Accepted.existing is true).
RolloutResult AttachRollout(v1::RolloutService::Stub& stub, const std::string& rollout_id,
                            uint32_t from_chunk, const RolloutCallbacks& callbacks,
                            grpc::ClientContext* ctx);

// ----- Helpers -------------------------------------------------------------------------------

// An insecure channel to `target` (host:port) whose receive limit fits large video chunks (the
// gRPC default of 4 MiB is too small for high-quality multi-second segments).
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);

// "INVALID_ARGUMENT", "UNAVAILABLE", ...
std::string StatusCodeName(grpc::StatusCode code);
// "INVALID_ARGUMENT: num_frames: must be >= 1" (just the code name when the message is empty).
std::string FormatStatus(const grpc::Status& status);

}  // namespace wmserve::client

#endif  // WMSERVE_CLIENT_ROLLOUT_CLIENT_H_
