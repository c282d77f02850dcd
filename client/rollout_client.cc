#include "client/rollout_client.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/file_io.h"
#include "client/trajectory_file.h"

namespace wmserve::client {
namespace {

// ----- Image header probing ------------------------------------------------------------------

uint32_t ReadBe32(absl::string_view b, size_t pos) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(b[pos])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(b[pos + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(b[pos + 2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(b[pos + 3]));
}

uint32_t ReadBe16(absl::string_view b, size_t pos) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(b[pos])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(b[pos + 1]));
}

absl::StatusOr<ImageSize> CheckedSize(uint32_t width, uint32_t height, absl::string_view format) {
  // PNG allows up to 2^31 - 1; anything that does not fit an int is not a real image.
  if (width == 0 || height == 0 || width > 0x7fffffffu || height > 0x7fffffffu) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s header has an invalid size %dx%d", format, width, height));
  }
  return ImageSize{static_cast<int>(width), static_cast<int>(height)};
}

absl::StatusOr<ImageSize> ProbePng(absl::string_view b) {
  // 8-byte signature, then the first chunk, which must be IHDR: length, "IHDR", width, height.
  if (b.size() < 24) return absl::InvalidArgumentError("truncated PNG header");
  if (b.substr(12, 4) != "IHDR") {
    return absl::InvalidArgumentError("PNG does not start with an IHDR chunk");
  }
  return CheckedSize(ReadBe32(b, 16), ReadBe32(b, 20), "PNG");
}

// SOF0..SOF15 carry the frame size, except C4 (DHT), C8 (JPG extension) and CC (DAC).
bool IsStartOfFrame(uint8_t marker) {
  return marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
}

// Markers that stand alone, without a length field.
bool IsStandaloneMarker(uint8_t marker) {
  return marker == 0x01 || marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7);
}

absl::StatusOr<ImageSize> ProbeJpeg(absl::string_view b) {
  size_t pos = 2;  // After SOI (FF D8).
  while (pos < b.size()) {
    if (static_cast<uint8_t>(b[pos]) != 0xFF) {
      return absl::InvalidArgumentError(absl::StrFormat("JPEG: expected a marker at byte %d", pos));
    }
    while (pos < b.size() && static_cast<uint8_t>(b[pos]) == 0xFF) ++pos;  // Fill bytes.
    if (pos >= b.size()) break;
    const uint8_t marker = static_cast<uint8_t>(b[pos++]);
    if (IsStandaloneMarker(marker)) continue;
    if (marker == 0xD9 || marker == 0xDA) {
      return absl::InvalidArgumentError("JPEG has no frame header (SOF) before the image data");
    }
    if (pos + 2 > b.size()) break;
    const uint32_t length = ReadBe16(b, pos);  // Includes the two length bytes.
    if (length < 2) {
      return absl::InvalidArgumentError(
          absl::StrFormat("JPEG: bad segment length at byte %d", pos));
    }
    if (IsStartOfFrame(marker)) {
      // Length, precision (1 byte), height, width.
      if (pos + 7 > b.size()) break;
      return CheckedSize(ReadBe16(b, pos + 5), ReadBe16(b, pos + 3), "JPEG");
    }
    pos += length;
  }
  return absl::InvalidArgumentError("truncated JPEG header");
}

// ----- Stream order --------------------------------------------------------------------------

const char* EventName(v1::RolloutEvent::EventCase event_case) {
  switch (event_case) {
    case v1::RolloutEvent::kAccepted:
      return "Accepted";
    case v1::RolloutEvent::kProgress:
      return "Progress";
    case v1::RolloutEvent::kStreamInit:
      return "StreamInit";
    case v1::RolloutEvent::kChunk:
      return "VideoChunk";
    case v1::RolloutEvent::kFinal:
      return "Final";
    case v1::RolloutEvent::EVENT_NOT_SET:
      break;
  }
  return "empty event";
}

// Enforces the event order documented in rollout.proto. Check() returns "" for an event that
// may come next, otherwise what is wrong with it.
class StreamOrderChecker {
 public:
  std::string Check(const v1::RolloutEvent& event) {
    const v1::RolloutEvent::EventCase event_case = event.event_case();
    // An event type this client does not know (a newer server) is skipped, not an error.
    if (event_case == v1::RolloutEvent::EVENT_NOT_SET) return "";
    if (got_final_) return absl::StrCat(EventName(event_case), " after Final");
    if (!accepted_ && event_case != v1::RolloutEvent::kAccepted) {
      return absl::StrCat(EventName(event_case), " before Accepted");
    }
    switch (event_case) {
      case v1::RolloutEvent::kAccepted:
        if (accepted_) return "second Accepted";
        accepted_ = true;
        return "";
      case v1::RolloutEvent::kStreamInit:
        if (got_init_) return "second StreamInit";
        got_init_ = true;
        return "";
      case v1::RolloutEvent::kChunk:
        return CheckChunk(event.chunk());
      case v1::RolloutEvent::kFinal:
        got_final_ = true;
        return "";
      default:
        return "";
    }
  }

 private:
  std::string CheckChunk(const v1::VideoChunk& chunk) {
    if (!got_init_) return absl::StrCat("VideoChunk ", chunk.index(), " before StreamInit");
    if (chunk.kind() == v1::CHUNK_KIND_PREVIEW) return CheckPreview(chunk);
    if (chunk.index() != next_index_) {
      return absl::StrCat("VideoChunk index ", chunk.index(), ", expected ", next_index_);
    }
    if (!frame_known_) {
      next_frame_ = chunk.first_frame();
      frame_known_ = true;
    }
    if (chunk.first_frame() != next_frame_) {
      return absl::StrCat("VideoChunk ", chunk.index(), " first_frame ", chunk.first_frame(),
                          ", expected ", next_frame_);
    }
    ++next_index_;
    next_frame_ += chunk.frame_count();
    return "";
  }

  // Previews are live only: a stream may join them anywhere, but then they are contiguous.
  std::string CheckPreview(const v1::VideoChunk& chunk) {
    if (preview_known_ && chunk.index() != next_preview_) {
      return absl::StrCat("preview VideoChunk index ", chunk.index(), ", expected ",
                          next_preview_);
    }
    preview_known_ = true;
    next_preview_ = chunk.index() + 1;
    return "";
  }

  bool accepted_ = false;
  bool got_init_ = false;
  bool got_final_ = false;
  uint32_t next_index_ = 0;
  uint32_t next_frame_ = 0;
  // An Attach stream starts at the requested chunk; its first frame is whatever that chunk's is.
  bool frame_known_ = true;
  bool preview_known_ = false;
  uint32_t next_preview_ = 0;

 public:
  StreamOrderChecker() = default;
  explicit StreamOrderChecker(uint32_t first_chunk)
      : next_index_(first_chunk), frame_known_(first_chunk == 0) {}
};

// Records `event` in `result` and hands it to its callback.
void Dispatch(v1::RolloutEvent& event, const RolloutCallbacks& callbacks, RolloutResult& result) {
  switch (event.event_case()) {
    case v1::RolloutEvent::kAccepted:
      result.accepted = true;
      result.rollout_id = event.accepted().rollout_id();
      result.queue_position = event.accepted().queue_position();
      if (callbacks.on_accepted) callbacks.on_accepted(event.accepted());
      break;
    case v1::RolloutEvent::kProgress:
      ++result.progress_events;
      result.last_progress = event.progress();
      if (callbacks.on_progress) callbacks.on_progress(event.progress());
      break;
    case v1::RolloutEvent::kStreamInit:
      result.got_init = true;
      result.init = event.stream_init();
      if (callbacks.keep_video_bytes) {
        result.video_bytes += result.init.init_segment();
        result.preview_video_bytes += result.init.preview_init_segment();
      }
      if (callbacks.on_init) callbacks.on_init(result.init);
      break;
    case v1::RolloutEvent::kChunk: {
      if (callbacks.on_chunk) callbacks.on_chunk(event.chunk());
      v1::VideoChunk* chunk = event.mutable_chunk();
      const bool preview = chunk->kind() == v1::CHUNK_KIND_PREVIEW;
      if (callbacks.keep_video_bytes) {
        (preview ? result.preview_video_bytes : result.video_bytes) += chunk->data();
      } else {
        chunk->clear_data();
      }
      (preview ? result.preview_chunks : result.chunks).push_back(std::move(*chunk));
      break;
    }
    case v1::RolloutEvent::kFinal:
      result.got_final = true;
      result.final = event.final();
      if (callbacks.on_final) callbacks.on_final(result.final);
      break;
    case v1::RolloutEvent::EVENT_NOT_SET:
      break;
  }
}

}  // namespace

absl::StatusOr<ImageSize> ProbeImageSize(absl::string_view bytes) {
  static constexpr char kPngSignature[] = "\x89PNG\r\n\x1a\n";
  if (bytes.substr(0, 8) == absl::string_view(kPngSignature, 8)) return ProbePng(bytes);
  if (bytes.size() >= 2 && static_cast<uint8_t>(bytes[0]) == 0xFF &&
      static_cast<uint8_t>(bytes[1]) == 0xD8) {
    return ProbeJpeg(bytes);
  }
  if (bytes.empty()) return absl::InvalidArgumentError("empty file, not a PNG or JPEG image");
  std::string first;
  for (size_t i = 0; i < bytes.size() && i < 4; ++i) {
    absl::StrAppend(&first, i == 0 ? "" : " ",
                    absl::StrFormat("%02x", static_cast<uint8_t>(bytes[i])));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("not a PNG or JPEG image (first bytes ", first, ")"));
}

absl::StatusOr<v1::RolloutRequest> BuildRolloutRequestFromImage(
    absl::string_view model, std::string image_bytes, v1::TrajectoryFile trajectory, uint64_t seed,
    const RequestOptions& options, absl::string_view image_name) {
  absl::StatusOr<ImageSize> size = ProbeImageSize(image_bytes);
  if (!size.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(image_name, ": ", size.status().message()));
  }
  ScaleIntrinsicsToImage(trajectory, size->width, size->height);

  v1::RolloutRequest request;
  request.set_model(std::string(model));
  request.set_image(std::move(image_bytes));
  request.set_fps(trajectory.fps());
  request.set_num_frames(static_cast<uint32_t>(trajectory.trajectory().poses_size()));
  request.set_seed(seed);
  *request.mutable_trajectory() = std::move(*trajectory.mutable_trajectory());
  *request.mutable_output() = options.output;
  request.set_client_request_id(options.client_request_id);
  for (const auto& [key, value] : options.model_options) {
    (*request.mutable_model_options())[key] = value;
  }
  return request;
}

absl::StatusOr<v1::RolloutRequest> BuildRolloutRequest(absl::string_view model,
                                                       const std::string& image_path,
                                                       v1::TrajectoryFile trajectory, uint64_t seed,
                                                       const RequestOptions& options) {
  absl::StatusOr<std::string> image = ReadFileBytes(image_path);
  if (!image.ok()) return image.status();
  return BuildRolloutRequestFromImage(model, *std::move(image), std::move(trajectory), seed,
                                      options, image_path);
}

namespace {

// Reads a Rollout or Attach stream to its end, checking the event order.
RolloutResult ReadStream(grpc::ClientReader<v1::RolloutEvent>& reader_ref,
                         StreamOrderChecker checker, const RolloutCallbacks& callbacks,
                         grpc::ClientContext* ctx) {
  RolloutResult result;
  grpc::ClientReader<v1::RolloutEvent>* reader = &reader_ref;
  std::string violation;
  v1::RolloutEvent event;
  while (reader->Read(&event)) {
    violation = checker.Check(event);
    if (!violation.empty()) {
      // Stop the server's work on a stream we can no longer interpret, then drain so Finish
      // does not wait on unread messages.
      ctx->TryCancel();
      while (reader->Read(&event)) {
      }
      break;
    }
    Dispatch(event, callbacks, result);
  }
  result.status = reader->Finish();
  if (!violation.empty()) {
    result.status = grpc::Status(grpc::StatusCode::INTERNAL,
                                 absl::StrCat("stream protocol violation: ", violation));
  } else if (result.status.ok() && !result.got_final) {
    result.status = grpc::Status(grpc::StatusCode::INTERNAL, "stream ended without Final");
  }
  return result;
}

}  // namespace

RolloutResult RunRollout(v1::RolloutService::Stub& stub, const v1::RolloutRequest& request,
                         const RolloutCallbacks& callbacks, grpc::ClientContext* ctx) {
  std::unique_ptr<grpc::ClientReader<v1::RolloutEvent>> reader = stub.Rollout(ctx, request);
  return ReadStream(*reader, StreamOrderChecker(), callbacks, ctx);
}

RolloutResult AttachRollout(v1::RolloutService::Stub& stub, const std::string& rollout_id,
                            uint32_t from_chunk, const RolloutCallbacks& callbacks,
                            grpc::ClientContext* ctx) {
  v1::AttachRequest request;
  request.set_rollout_id(rollout_id);
  request.set_from_chunk(from_chunk);
  std::unique_ptr<grpc::ClientReader<v1::RolloutEvent>> reader = stub.Attach(ctx, request);
  return ReadStream(*reader, StreamOrderChecker(from_chunk), callbacks, ctx);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // Chunks come from our own server; no cap needed.
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

std::string StatusCodeName(grpc::StatusCode code) {
  const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? absl::StrCat("CODE_", static_cast<int>(code)) : name;
}

std::string FormatStatus(const grpc::Status& status) {
  std::string text = StatusCodeName(status.error_code());
  if (!status.error_message().empty()) absl::StrAppend(&text, ": ", status.error_message());
  return text;
}

}  // namespace wmserve::client
