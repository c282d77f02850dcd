#include "worker/media/video_decoder.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/media/libav_util.h"

namespace wmserve::media {
namespace {

using internal::AvErrorText;
using internal::AvInternalError;
using internal::AvioContextPtr;
using internal::CodecContextPtr;
using internal::FramePtr;
using internal::InputFormatPtr;
using internal::PacketPtr;
using internal::SwsContextPtr;

constexpr int kAvioBufferSize = 32 * 1024;

// The bytes being demuxed and the read position; the AVIO callbacks' opaque.
struct MemoryReader {
  absl::string_view data;
  int64_t pos = 0;
};

int ReadFromMemory(void* opaque, uint8_t* buf, int size) {
  auto* reader = static_cast<MemoryReader*>(opaque);
  const int64_t left = static_cast<int64_t>(reader->data.size()) - reader->pos;
  if (left <= 0) return AVERROR_EOF;
  const int n = static_cast<int>(std::min<int64_t>(left, size));
  std::memcpy(buf, reader->data.data() + reader->pos, n);
  reader->pos += n;
  return n;
}

// Seeking lets the mov demuxer skip mdat payloads while it looks for boxes, and answers
// AVSEEK_SIZE so probing knows the total length.
int64_t SeekInMemory(void* opaque, int64_t offset, int whence) {
  auto* reader = static_cast<MemoryReader*>(opaque);
  const auto size = static_cast<int64_t>(reader->data.size());
  int64_t target;
  switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE:
      return size;
    case SEEK_SET:
      target = offset;
      break;
    case SEEK_CUR:
      target = reader->pos + offset;
      break;
    case SEEK_END:
      target = size + offset;
      break;
    default:
      return AVERROR(EINVAL);
  }
  if (target < 0 || target > size) return AVERROR(EINVAL);
  reader->pos = target;
  return target;
}

absl::Status BadInput(absl::string_view what, int error) {
  return absl::InvalidArgumentError(absl::StrCat("video: ", what, ": ", AvErrorText(error)));
}

bool IsKeyFrame(const AVFrame& frame) {
#ifdef AV_FRAME_FLAG_KEY  // FFmpeg 6.1+; key_frame is deprecated there
  return (frame.flags & AV_FRAME_FLAG_KEY) != 0;
#else
  return frame.key_frame != 0;
#endif
}

// Demuxer + decoder state for one DecodeVideo call. Members are declared so that the format
// context (which reads through `avio`, whose opaque is `reader`) is destroyed first.
class Decoder {
 public:
  explicit Decoder(absl::string_view bytes) { reader_.data = bytes; }

  absl::Status Open();
  absl::StatusOr<DecodedVideo> DecodeAll();

 private:
  absl::Status SendAndCollect(const AVPacket* packet);
  absl::Status Collect();

  MemoryReader reader_;
  AvioContextPtr avio_;
  InputFormatPtr format_;
  CodecContextPtr codec_;
  FramePtr frame_;
  PacketPtr packet_;
  SwsContextPtr sws_;
  int stream_index_ = -1;
  DecodedVideo out_;
};

absl::Status Decoder::Open() {
  auto* buffer = static_cast<uint8_t*>(av_malloc(kAvioBufferSize));
  if (buffer == nullptr) return absl::ResourceExhaustedError("video: out of memory");
  avio_.reset(avio_alloc_context(buffer, kAvioBufferSize, /*write_flag=*/0, &reader_,
                                 &ReadFromMemory, nullptr, &SeekInMemory));
  if (avio_ == nullptr) {
    av_free(buffer);
    return absl::ResourceExhaustedError("video: out of memory");
  }
  AVFormatContext* raw = avformat_alloc_context();
  if (raw == nullptr) return absl::ResourceExhaustedError("video: out of memory");
  raw->pb = avio_.get();
  raw->flags |= AVFMT_FLAG_CUSTOM_IO;  // keeps avformat_close_input off our AVIO context
  // On failure avformat_open_input frees the context itself, so it is adopted only on success.
  if (int err = avformat_open_input(&raw, nullptr, nullptr, nullptr); err < 0) {
    return BadInput("cannot open container", err);
  }
  format_.reset(raw);
  if (int err = avformat_find_stream_info(format_.get(), nullptr); err < 0) {
    return BadInput("cannot read stream info", err);
  }

  const AVCodec* codec = nullptr;
  stream_index_ = av_find_best_stream(format_.get(), AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
  if (stream_index_ < 0) return BadInput("no decodable video stream", stream_index_);
  const AVStream* stream = format_->streams[stream_index_];

  codec_.reset(avcodec_alloc_context3(codec));
  frame_.reset(av_frame_alloc());
  packet_.reset(av_packet_alloc());
  if (codec_ == nullptr || frame_ == nullptr || packet_ == nullptr) {
    return absl::ResourceExhaustedError("video: out of memory");
  }
  if (int err = avcodec_parameters_to_context(codec_.get(), stream->codecpar); err < 0) {
    return AvInternalError("video: avcodec_parameters_to_context", err);
  }
  // Single-threaded: the log mute is per thread, and test clips are small.
  codec_->thread_count = 1;
  if (int err = avcodec_open2(codec_.get(), codec, nullptr); err < 0) {
    return BadInput("cannot open decoder", err);
  }

  out_.width = codec_->width;
  out_.height = codec_->height;
  out_.codec_name = codec->name;
  const AVRational rate = stream->avg_frame_rate;
  out_.fps = rate.num > 0 && rate.den > 0 ? av_q2d(rate) : 0.0;
  return absl::OkStatus();
}

absl::Status Decoder::Collect() {
  while (true) {
    const int err = avcodec_receive_frame(codec_.get(), frame_.get());
    if (err == AVERROR(EAGAIN) || err == AVERROR_EOF) return absl::OkStatus();
    if (err < 0) return BadInput("decode error", err);
    absl::StatusOr<RgbImage> rgb = internal::FrameToRgb(*frame_, sws_);
    const bool key = IsKeyFrame(*frame_);
    av_frame_unref(frame_.get());
    if (!rgb.ok()) return rgb.status();
    // Decoders emit frames in presentation order, so arrival order is the answer.
    out_.frames.push_back(*std::move(rgb));
    out_.key_frames.push_back(key);
  }
}

absl::Status Decoder::SendAndCollect(const AVPacket* packet) {
  if (int err = avcodec_send_packet(codec_.get(), packet); err < 0 && err != AVERROR_EOF) {
    return BadInput("decode error", err);
  }
  return Collect();
}

absl::StatusOr<DecodedVideo> Decoder::DecodeAll() {
  while (true) {
    const int err = av_read_frame(format_.get(), packet_.get());
    if (err == AVERROR_EOF) break;
    if (err < 0) return BadInput("cannot read packet", err);
    absl::Status s = absl::OkStatus();
    if (packet_->stream_index == stream_index_) s = SendAndCollect(packet_.get());
    av_packet_unref(packet_.get());
    if (!s.ok()) return s;
  }
  if (absl::Status s = SendAndCollect(nullptr); !s.ok()) return s;  // drain
  if (!out_.frames.empty()) {
    out_.width = out_.frames.front().width;
    out_.height = out_.frames.front().height;
  }
  return std::move(out_);
}

}  // namespace

absl::StatusOr<DecodedVideo> DecodeVideo(absl::string_view container_bytes) {
  if (container_bytes.empty()) return absl::InvalidArgumentError("video: empty");
  // Container/bitstream complaints end up in the Status; keep them off stderr.
  internal::ScopedQuietLibavLog quiet;
  Decoder decoder(container_bytes);
  if (absl::Status s = decoder.Open(); !s.ok()) return s;
  return decoder.DecodeAll();
}

absl::StatusOr<double> Psnr(const RgbImage& a, const RgbImage& b) {
  if (a.width != b.width || a.height != b.height) {
    return absl::InvalidArgumentError(absl::StrCat("psnr: sizes differ (", a.width, "x", a.height,
                                                   " vs ", b.width, "x", b.height, ")"));
  }
  if (a.pixels.size() != b.pixels.size() || a.pixels.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("psnr: pixel buffers differ or are empty (",
                                                   a.pixels.size(), " vs ", b.pixels.size(),
                                                   " bytes)"));
  }
  uint64_t squared_error = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) {
    const int d = int{a.pixels[i]} - int{b.pixels[i]};
    squared_error += static_cast<uint64_t>(d * d);
  }
  if (squared_error == 0) return std::numeric_limits<double>::infinity();
  const double mse = static_cast<double>(squared_error) / static_cast<double>(a.pixels.size());
  return 10.0 * std::log10(255.0 * 255.0 / mse);
}

}  // namespace wmserve::media
