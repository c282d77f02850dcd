#include "worker/media/fmp4_encoder.h"

#include <cmath>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/media/libav_util.h"

extern "C" {
#include <libavutil/dict.h>
#include <libavutil/opt.h>
#include <libavutil/rational.h>
}

namespace wmserve::media {
namespace {

using internal::AvInternalError;
using internal::AvioContextPtr;
using internal::CodecContextPtr;
using internal::FramePtr;
using internal::OutputFormatPtr;
using internal::PacketPtr;
using internal::SwsContextPtr;

constexpr int kMaxDimension = 8192;
constexpr int kAvioBufferSize = 64 * 1024;

// fragment per av_write_frame(nullptr) call; moov up front with no samples (mvex instead);
// offsets relative to each moof, so a segment is position-independent (MSE, re-attach).
constexpr char kMovFlags[] = "frag_custom+empty_moov+default_base_moof";

absl::Status ValidateOptions(const EncoderOptions& o) {
  auto invalid = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("fmp4: ", parts...));
  };
  if (o.width <= 0 || o.width > kMaxDimension || o.width % 2 != 0) {
    return invalid("width ", o.width, " must be even and in [2, ", kMaxDimension, "]");
  }
  if (o.height <= 0 || o.height > kMaxDimension || o.height % 2 != 0) {
    return invalid("height ", o.height, " must be even and in [2, ", kMaxDimension, "]");
  }
  if (!(o.fps > 0 && o.fps <= 240)) return invalid("fps ", o.fps, " must be in (0, 240]");
  if (o.crf < 0 || o.crf > 51) return invalid("crf ", o.crf, " must be in [0, 51]");
  if (o.threads < 0 || o.threads > 64) return invalid("threads ", o.threads, " must be in [0, 64]");
  if (X264PresetName(o.preset) == nullptr) {
    return invalid("unknown preset ", static_cast<int>(o.preset));
  }
  return absl::OkStatus();
}

// RFC 6381 "avc1.PPCCLL" from the encoder's extradata, which is either avcC
// (configurationVersion 1, then profile, constraint flags, level) or Annex B NAL units (libx264
// with a global header writes these), where the same three bytes follow the SPS NAL header.
absl::StatusOr<std::string> MimeTypeFromExtradata(const uint8_t* data, int size) {
  const uint8_t* ppccll = nullptr;
  if (size >= 4 && data[0] == 1) {
    ppccll = data + 1;
  } else {
    for (int i = 0; i + 6 < size; ++i) {
      // 00 00 01 start code, then a NAL header whose type (low 5 bits) is 7 = SPS.
      if (data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 && (data[i + 3] & 0x1f) == 7) {
        ppccll = data + i + 4;
        break;
      }
    }
  }
  if (ppccll == nullptr) {
    return absl::InternalError("fmp4: encoder extradata holds no H.264 SPS");
  }
  return absl::StrFormat("video/mp4; codecs=\"avc1.%02x%02x%02x\"", ppccll[0], ppccll[1],
                         ppccll[2]);
}

}  // namespace

const char* X264PresetName(EncoderPreset preset) {
  switch (preset) {
    case EncoderPreset::kFast:
      return "ultrafast";
    case EncoderPreset::kBalanced:
      return "veryfast";
    case EncoderPreset::kHigh:
      return "medium";
  }
  return nullptr;
}

struct Fmp4Encoder::Impl {
  // Declaration order is destruction order reversed: the muxer (which points at the AVIO
  // context, whose opaque points at `pending`) goes before them.
  std::string pending;  // bytes the muxer wrote since the last hand-off
  AvioContextPtr avio;
  OutputFormatPtr muxer;
  AVStream* stream = nullptr;  // owned by `muxer`
  CodecContextPtr encoder;
  SwsContextPtr rgb_to_yuv;
  FramePtr yuv;
  std::vector<uint8_t> last_row_scratch;  // see internal::ScaleRgb24
  PacketPtr packet;

  EncoderOptions options;
  std::string init_segment;
  std::string mime_type;
  int64_t frames_encoded = 0;  // also the next frame's pts, in encoder time_base (1 / fps)
  int64_t packets_muxed = 0;
  absl::Status broken;  // sticky: the first error that left the encoder in an unknown state

  absl::Status OpenEncoder(const AVCodec* codec, AVRational frame_rate);
  absl::Status OpenMuxer();
  absl::Status WriteHeader();
  absl::Status PrepareConversion();
  absl::Status EncodeFrame(const uint8_t* rgb, bool first_in_segment);
  absl::Status DrainPackets(bool first_in_segment);
  absl::StatusOr<std::string> FlushFragment();
  absl::StatusOr<std::string> EncodeSegment(const uint8_t* rgb, int frame_count);
};

namespace {

#if LIBAVFORMAT_VERSION_MAJOR >= 61
int AppendToPending(void* opaque, const uint8_t* buf, int size) {
#else
int AppendToPending(void* opaque, uint8_t* buf, int size) {
#endif
  // Called from C: an exception must not cross it.
  try {
    static_cast<std::string*>(opaque)->append(reinterpret_cast<const char*>(buf), size);
    return size;
  } catch (const std::exception&) {
    return AVERROR(ENOMEM);
  }
}

}  // namespace

absl::Status Fmp4Encoder::Impl::OpenEncoder(const AVCodec* codec, AVRational frame_rate) {
  encoder.reset(avcodec_alloc_context3(codec));
  if (encoder == nullptr) return absl::ResourceExhaustedError("fmp4: out of memory");
  AVCodecContext& enc = *encoder;
  enc.width = options.width;
  enc.height = options.height;
  enc.pix_fmt = AV_PIX_FMT_YUV420P;
  enc.framerate = frame_rate;
  enc.time_base = av_inv_q(frame_rate);  // one tick per frame: pts = frame index
  enc.sample_aspect_ratio = AVRational{1, 1};
  // Segments are cut by forced IDRs, not by the GOP; a long GOP only matters for a segment
  // longer than it, where x264 then inserts an extra key frame.
  enc.gop_size = 250;
  enc.max_b_frames = 0;
  enc.thread_count = options.threads;
  // Tag what rgb_to_yuv produces (BT.709 limited range, the HD/web default), so players convert
  // back with the same matrix.
  enc.colorspace = AVCOL_SPC_BT709;
  enc.color_primaries = AVCOL_PRI_BT709;
  enc.color_trc = AVCOL_TRC_BT709;
  enc.color_range = AVCOL_RANGE_MPEG;
  if (muxer->oformat->flags & AVFMT_GLOBALHEADER) enc.flags |= AV_CODEC_FLAG_GLOBAL_HEADER;

  const std::string crf = absl::StrCat(options.crf);
  struct {
    const char* key;
    const char* value;
  } const x264_options[] = {
      {"preset", X264PresetName(options.preset)},
      // No lookahead and sliced threads: each frame's packet comes out of the send that took
      // it, so a segment's frames are all in hand when it is cut.
      {"tune", "zerolatency"},
      {"crf", crf.c_str()},
      // A frame sent as AV_PICTURE_TYPE_I becomes an IDR, not just a recovery-point I frame.
      {"forced-idr", "1"},
  };
  for (const auto& opt : x264_options) {
    if (int err = av_opt_set(enc.priv_data, opt.key, opt.value, 0); err < 0) {
      return AvInternalError(absl::StrCat("fmp4: libx264 option ", opt.key, "=", opt.value), err);
    }
  }
  if (int err = avcodec_open2(&enc, codec, nullptr); err < 0) {
    return AvInternalError("fmp4: cannot open libx264", err);
  }
  return absl::OkStatus();
}

absl::Status Fmp4Encoder::Impl::OpenMuxer() {
  AVFormatContext* raw = nullptr;
  if (int err = avformat_alloc_output_context2(&raw, nullptr, "mp4", nullptr); err < 0) {
    return AvInternalError("fmp4: cannot create the mp4 muxer", err);
  }
  muxer.reset(raw);

  auto* buffer = static_cast<uint8_t*>(av_malloc(kAvioBufferSize));
  if (buffer == nullptr) return absl::ResourceExhaustedError("fmp4: out of memory");
  // No seek callback: the muxer sees an unseekable stream, which is what makes it write
  // everything forward (no moov/size patch-ups), exactly like a live socket.
  avio.reset(avio_alloc_context(buffer, kAvioBufferSize, /*write_flag=*/1, &pending, nullptr,
                                &AppendToPending, nullptr));
  if (avio == nullptr) {
    av_free(buffer);
    return absl::ResourceExhaustedError("fmp4: out of memory");
  }
  muxer->pb = avio.get();
  muxer->flags |= AVFMT_FLAG_CUSTOM_IO;  // we free the AVIO context, not libavformat
  return absl::OkStatus();
}

absl::Status Fmp4Encoder::Impl::WriteHeader() {
  stream = avformat_new_stream(muxer.get(), nullptr);
  if (stream == nullptr) return absl::ResourceExhaustedError("fmp4: out of memory");
  if (int err = avcodec_parameters_from_context(stream->codecpar, encoder.get()); err < 0) {
    return AvInternalError("fmp4: avcodec_parameters_from_context", err);
  }
  // A hint only: the mov muxer replaces it with its own track timescale (>= 10000 ticks/s) in
  // avformat_write_header, which is why packets are rescaled to stream->time_base afterwards.
  stream->time_base = encoder->time_base;
  stream->avg_frame_rate = encoder->framerate;

  AVDictionary* raw_options = nullptr;
  av_dict_set(&raw_options, "movflags", kMovFlags, 0);
  const int err = avformat_write_header(muxer.get(), &raw_options);
  const bool unused_option = av_dict_count(raw_options) > 0;
  av_dict_free(&raw_options);
  if (err < 0) return AvInternalError("fmp4: avformat_write_header", err);
  if (unused_option) {
    return absl::InternalError(absl::StrCat("fmp4: mp4 muxer did not accept movflags ", kMovFlags));
  }
  avio_flush(muxer->pb);
  if (muxer->pb->error < 0)
    return AvInternalError("fmp4: writing the init segment", muxer->pb->error);
  init_segment = std::move(pending);
  pending.clear();
  // With empty_moov the header call itself emits ftyp + moov; anything else means the muxer
  // behaves differently from what the wire format promises.
  if (init_segment.size() < 8 || init_segment.compare(4, 4, "ftyp") != 0) {
    return absl::InternalError("fmp4: muxer did not write an ftyp/moov init segment");
  }
  return absl::OkStatus();
}

absl::Status Fmp4Encoder::Impl::PrepareConversion() {
  // Luma is not resampled (same size); SWS_BILINEAR only affects the 2x chroma decimation.
  rgb_to_yuv.reset(sws_getContext(options.width, options.height, AV_PIX_FMT_RGB24, options.width,
                                  options.height, AV_PIX_FMT_YUV420P, SWS_BILINEAR, nullptr,
                                  nullptr, nullptr));
  if (rgb_to_yuv == nullptr) return absl::InternalError("fmp4: cannot create swscale context");
  // swscale's default RGB->YUV matrix is BT.601; make it BT.709 limited range to match the tags.
  const int* bt709 = sws_getCoefficients(SWS_CS_ITU709);
  if (sws_setColorspaceDetails(rgb_to_yuv.get(), bt709, /*srcRange=*/1, bt709, /*dstRange=*/0, 0,
                               1 << 16, 1 << 16) < 0) {
    return absl::InternalError("fmp4: swscale rejected the BT.709 colorspace");
  }

  yuv.reset(av_frame_alloc());
  packet.reset(av_packet_alloc());
  if (yuv == nullptr || packet == nullptr)
    return absl::ResourceExhaustedError("fmp4: out of memory");
  yuv->format = AV_PIX_FMT_YUV420P;
  yuv->width = options.width;
  yuv->height = options.height;
  yuv->colorspace = AVCOL_SPC_BT709;
  yuv->color_range = AVCOL_RANGE_MPEG;
  if (int err = av_frame_get_buffer(yuv.get(), 0); err < 0) {
    return AvInternalError("fmp4: av_frame_get_buffer", err);
  }
  return absl::OkStatus();
}

absl::Status Fmp4Encoder::Impl::EncodeFrame(const uint8_t* rgb, bool first_in_segment) {
  // The encoder may still reference the previous picture; this copies only if it does.
  if (int err = av_frame_make_writable(yuv.get()); err < 0) {
    return AvInternalError("fmp4: av_frame_make_writable", err);
  }
  if (absl::Status s = internal::ScaleRgb24(rgb_to_yuv.get(), rgb, options.width, options.height,
                                            yuv->data, yuv->linesize, last_row_scratch);
      !s.ok()) {
    return absl::InternalError(absl::StrCat("fmp4: ", s.message()));
  }
  yuv->pts = frames_encoded;
  yuv->pict_type = first_in_segment ? AV_PICTURE_TYPE_I : AV_PICTURE_TYPE_NONE;
  if (int err = avcodec_send_frame(encoder.get(), yuv.get()); err < 0) {
    return AvInternalError("fmp4: avcodec_send_frame", err);
  }
  ++frames_encoded;
  return DrainPackets(first_in_segment);
}

absl::Status Fmp4Encoder::Impl::DrainPackets(bool first_in_segment) {
  while (true) {
    const int err = avcodec_receive_packet(encoder.get(), packet.get());
    if (err == AVERROR(EAGAIN)) return absl::OkStatus();
    if (err < 0) return AvInternalError("fmp4: avcodec_receive_packet", err);
    if (first_in_segment && !(packet->flags & AV_PKT_FLAG_KEY)) {
      av_packet_unref(packet.get());
      return absl::InternalError("fmp4: libx264 did not start the segment with an IDR frame");
    }
    // FFmpeg 5.1's libx264 wrapper leaves duration 0, which makes the mov muxer guess the last
    // sample's duration in every fragment. Every frame lasts exactly one tick of time_base.
    if (packet->duration == 0) packet->duration = 1;
    av_packet_rescale_ts(packet.get(), encoder->time_base, stream->time_base);
    packet->stream_index = stream->index;
    // av_write_frame (not the interleaved variant) hands the packet straight to the muxer, which
    // keeps it in the current fragment until FlushFragment. It does not take our reference.
    const int write_err = av_write_frame(muxer.get(), packet.get());
    av_packet_unref(packet.get());
    if (write_err < 0) return AvInternalError("fmp4: av_write_frame", write_err);
    ++packets_muxed;
  }
}

absl::StatusOr<std::string> Fmp4Encoder::Impl::FlushFragment() {
  if (packets_muxed != frames_encoded) {
    return absl::InternalError(absl::StrCat("fmp4: libx264 held back ",
                                            frames_encoded - packets_muxed,
                                            " frame(s); the segment cannot be cut"));
  }
  if (int err = av_write_frame(muxer.get(), nullptr); err < 0) {
    return AvInternalError("fmp4: flushing the fragment", err);
  }
  avio_flush(muxer->pb);
  if (muxer->pb->error < 0) return AvInternalError("fmp4: writing the fragment", muxer->pb->error);
  std::string segment;
  segment.swap(pending);
  return segment;
}

absl::StatusOr<std::string> Fmp4Encoder::Impl::EncodeSegment(const uint8_t* rgb, int frame_count) {
  if (!broken.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("fmp4: encoder unusable after an earlier error: ", broken.message()));
  }
  if (rgb == nullptr || frame_count < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("fmp4: EncodeSegment needs frames (got frame_count ", frame_count,
                     rgb == nullptr ? ", null data)" : ")"));
  }
  const size_t frame_bytes = static_cast<size_t>(options.width) * options.height * 3;
  for (int i = 0; i < frame_count; ++i) {
    if (absl::Status s = EncodeFrame(rgb + frame_bytes * i, /*first_in_segment=*/i == 0); !s.ok()) {
      broken = s;
      return s;
    }
  }
  absl::StatusOr<std::string> segment = FlushFragment();
  if (!segment.ok()) broken = segment.status();
  return segment;
}

absl::StatusOr<std::unique_ptr<Fmp4Encoder>> Fmp4Encoder::Create(const EncoderOptions& options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  internal::InitLibavLogging();
  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (codec == nullptr) {
    return absl::InternalError("fmp4: this FFmpeg build has no libx264 encoder");
  }
  // Exact for integer and NTSC-style rates (29.97 -> 2997/100, 30000/1001 stays 30000/1001).
  const AVRational frame_rate = av_d2q(options.fps, 100000);

  auto impl = std::make_unique<Impl>();
  impl->options = options;
  absl::Status s = impl->OpenMuxer();
  if (s.ok()) s = impl->OpenEncoder(codec, frame_rate);
  if (s.ok()) s = impl->WriteHeader();
  if (s.ok()) s = impl->PrepareConversion();
  if (!s.ok()) return s;
  absl::StatusOr<std::string> mime =
      MimeTypeFromExtradata(impl->encoder->extradata, impl->encoder->extradata_size);
  if (!mime.ok()) return mime.status();
  impl->mime_type = *std::move(mime);
  return std::unique_ptr<Fmp4Encoder>(new Fmp4Encoder(std::move(impl)));
}

Fmp4Encoder::Fmp4Encoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Fmp4Encoder::~Fmp4Encoder() = default;

const std::string& Fmp4Encoder::init_segment() const { return impl_->init_segment; }
const std::string& Fmp4Encoder::mime_type() const { return impl_->mime_type; }
int64_t Fmp4Encoder::frames_encoded() const { return impl_->frames_encoded; }

absl::StatusOr<std::string> Fmp4Encoder::EncodeSegment(const uint8_t* rgb, int frame_count) {
  return impl_->EncodeSegment(rgb, frame_count);
}

}  // namespace wmserve::media
