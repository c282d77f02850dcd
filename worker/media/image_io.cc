#include "worker/media/image_io.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/media/libav_util.h"

namespace wmserve::media {
namespace {

using internal::AvErrorText;
using internal::AvInternalError;
using internal::CodecContextPtr;
using internal::FramePtr;
using internal::PacketPtr;
using internal::SwsContextPtr;

enum class ImageFormat { kPng, kJpeg };

const char* FormatName(ImageFormat format) { return format == ImageFormat::kPng ? "PNG" : "JPEG"; }

constexpr unsigned char kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

uint8_t ByteAt(absl::string_view bytes, size_t pos) { return static_cast<uint8_t>(bytes[pos]); }

uint32_t ReadBe32(absl::string_view bytes, size_t pos) {
  return (uint32_t{ByteAt(bytes, pos)} << 24) | (uint32_t{ByteAt(bytes, pos + 1)} << 16) |
         (uint32_t{ByteAt(bytes, pos + 2)} << 8) | uint32_t{ByteAt(bytes, pos + 3)};
}

uint16_t ReadBe16(absl::string_view bytes, size_t pos) {
  return static_cast<uint16_t>((ByteAt(bytes, pos) << 8) | ByteAt(bytes, pos + 1));
}

absl::Status Corrupt(ImageFormat format, absl::string_view detail) {
  return absl::InvalidArgumentError(
      absl::StrCat("image: corrupt or truncated ", FormatName(format), " data (", detail, ")"));
}

// Header geometry, read by our own parsers before libavcodec sees a byte, so a small file that
// claims a huge size is refused before anything is allocated for it.
struct ImageHeader {
  ImageFormat format;
  int width = 0;
  int height = 0;
};

absl::StatusOr<ImageFormat> SniffFormat(absl::string_view bytes) {
  if (bytes.empty()) return absl::InvalidArgumentError("image: empty");
  if (bytes.size() >= sizeof(kPngSignature) &&
      std::memcmp(bytes.data(), kPngSignature, sizeof(kPngSignature)) == 0) {
    return ImageFormat::kPng;
  }
  if (bytes.size() >= 3 && ByteAt(bytes, 0) == 0xFF && ByteAt(bytes, 1) == 0xD8 &&
      ByteAt(bytes, 2) == 0xFF) {
    return ImageFormat::kJpeg;
  }
  std::string first;
  for (size_t i = 0; i < bytes.size() && i < 4; ++i) {
    absl::StrAppendFormat(&first, "%s%02x", i == 0 ? "" : " ", ByteAt(bytes, i));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("image: not PNG or JPEG (first bytes ", first, ")"));
}

// Walks the PNG chunk list: IHDR first, every chunk inside the buffer, at least one IDAT, and an
// IEND (bytes after IEND are ignored, as browsers do). libavcodec alone accepts some truncated
// files (it stops quietly once the image rows are complete), so this is what makes "truncated"
// reliably an error.
absl::StatusOr<ImageHeader> ParsePngHeader(absl::string_view bytes) {
  ImageHeader header{ImageFormat::kPng};
  size_t pos = sizeof(kPngSignature);
  bool saw_idat = false;
  for (int index = 0;; ++index) {
    if (bytes.size() - pos < 12) {
      return Corrupt(ImageFormat::kPng, absl::StrCat("ends inside a chunk header at byte ", pos));
    }
    const uint32_t length = ReadBe32(bytes, pos);
    const absl::string_view type = bytes.substr(pos + 4, 4);
    if (length > 0x7fffffffu || length > bytes.size() - pos - 12) {
      return Corrupt(ImageFormat::kPng,
                     absl::StrCat("chunk at byte ", pos, " runs past the end of the data"));
    }
    if (index == 0) {
      if (type != "IHDR" || length != 13) {
        return Corrupt(ImageFormat::kPng, "first chunk is not IHDR");
      }
      const uint32_t width = ReadBe32(bytes, pos + 8);
      const uint32_t height = ReadBe32(bytes, pos + 12);
      if (width == 0 || height == 0 || width > 0x7fffffffu || height > 0x7fffffffu) {
        return Corrupt(ImageFormat::kPng, absl::StrCat("bad size ", width, "x", height));
      }
      header.width = static_cast<int>(width);
      header.height = static_cast<int>(height);
    }
    if (type == "IDAT") saw_idat = true;
    if (type == "IEND") {
      if (!saw_idat) return Corrupt(ImageFormat::kPng, "no IDAT chunk");
      return header;
    }
    pos += 12 + length;
  }
}

bool IsJpegStartOfFrame(uint8_t marker) {
  // SOF0..SOF15 are C0..CF, except C4 (DHT), C8 (reserved JPG) and CC (DAC).
  return marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
}

// After an SOS header, skips entropy-coded data up to the next real marker. Inside that data an
// FF byte is followed by 00 (stuffing), D0..D7 (restart) or more FF fill bytes; anything else
// starts a marker. Returns the marker's position, or npos if the data ends first.
size_t SkipEntropyCodedData(absl::string_view bytes, size_t pos) {
  while (pos + 1 < bytes.size()) {
    if (ByteAt(bytes, pos) != 0xFF) {
      ++pos;
      continue;
    }
    const uint8_t next = ByteAt(bytes, pos + 1);
    if (next == 0x00 || (next >= 0xD0 && next <= 0xD7)) {
      pos += 2;
    } else if (next == 0xFF) {
      ++pos;
    } else {
      return pos;
    }
  }
  return absl::string_view::npos;
}

// Walks the JPEG marker segments from SOI to EOI (progressive files have several scans), taking
// the size from the first SOF. The mjpeg decoder fills a truncated scan with grey and reports
// success, so a missing EOI is how truncation is detected.
absl::StatusOr<ImageHeader> ParseJpegHeader(absl::string_view bytes) {
  ImageHeader header{ImageFormat::kJpeg};
  bool saw_sof = false;
  bool saw_sos = false;
  size_t pos = 2;  // after SOI
  while (true) {
    if (pos >= bytes.size()) return Corrupt(ImageFormat::kJpeg, "no EOI marker");
    if (ByteAt(bytes, pos) != 0xFF) {
      return Corrupt(ImageFormat::kJpeg, absl::StrCat("expected a marker at byte ", pos));
    }
    while (pos < bytes.size() && ByteAt(bytes, pos) == 0xFF) ++pos;  // fill bytes
    if (pos >= bytes.size()) return Corrupt(ImageFormat::kJpeg, "no EOI marker");
    const uint8_t marker = ByteAt(bytes, pos++);
    if (marker == 0xD9) {  // EOI
      if (!saw_sof || !saw_sos) return Corrupt(ImageFormat::kJpeg, "no frame or scan before EOI");
      return header;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;  // no payload
    if (marker == 0xD8 || marker == 0x00) {
      return Corrupt(ImageFormat::kJpeg, absl::StrCat("unexpected marker at byte ", pos - 1));
    }
    if (bytes.size() - pos < 2) return Corrupt(ImageFormat::kJpeg, "ends inside a segment");
    const size_t length = ReadBe16(bytes, pos);
    if (length < 2 || length > bytes.size() - pos) {
      return Corrupt(ImageFormat::kJpeg,
                     absl::StrCat("segment at byte ", pos - 2, " runs past the end of the data"));
    }
    if (IsJpegStartOfFrame(marker) && !saw_sof) {
      if (length < 8) return Corrupt(ImageFormat::kJpeg, "short SOF segment");
      header.height = ReadBe16(bytes, pos + 3);
      header.width = ReadBe16(bytes, pos + 5);
      // Height 0 means "defined later by a DNL marker", which the decoder does not support.
      if (header.width == 0 || header.height == 0) {
        return Corrupt(ImageFormat::kJpeg,
                       absl::StrCat("bad size ", header.width, "x", header.height));
      }
      saw_sof = true;
    }
    pos += length;
    if (marker == 0xDA) {  // SOS: entropy-coded data follows the header
      if (!saw_sof) return Corrupt(ImageFormat::kJpeg, "scan before frame header");
      saw_sos = true;
      pos = SkipEntropyCodedData(bytes, pos);
      if (pos == absl::string_view::npos) {
        return Corrupt(ImageFormat::kJpeg, "scan data ends without EOI");
      }
    }
  }
}

absl::Status CheckLimits(int width, int height, const ImageDecodeLimits& limits) {
  if (width > limits.max_width || height > limits.max_height) {
    return absl::InvalidArgumentError(absl::StrCat("image: ", width, "x", height, " exceeds the ",
                                                   limits.max_width, "x", limits.max_height,
                                                   " limit"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CodecContextPtr> OpenDecoder(const ImageHeader& header,
                                            const ImageDecodeLimits& limits) {
  const AVCodec* codec = avcodec_find_decoder(
      header.format == ImageFormat::kPng ? AV_CODEC_ID_PNG : AV_CODEC_ID_MJPEG);
  if (codec == nullptr) {
    return absl::InternalError(
        absl::StrCat("image: no ", FormatName(header.format), " decoder in this FFmpeg build"));
  }
  CodecContextPtr ctx(avcodec_alloc_context3(codec));
  if (ctx == nullptr) return absl::ResourceExhaustedError("image: out of memory");
  // One thread: no frame-threading delay, and log messages (muted) stay on this thread.
  ctx->thread_count = 1;
  // Second line of defence behind the header check (e.g. a JPEG with a second, larger SOF).
  ctx->max_pixels = static_cast<int64_t>(limits.max_width) * limits.max_height;
  // Fail on CRC mismatches and bitstream errors instead of concealing them: a server should
  // reject a damaged upload rather than condition a model on half a grey image.
  ctx->err_recognition = AV_EF_CRCCHECK | AV_EF_EXPLODE;
  if (int err = avcodec_open2(ctx.get(), codec, nullptr); err < 0) {
    return AvInternalError("image: cannot open decoder", err);
  }
  return ctx;
}

// Some decoder paths fail with a bare -1, which av_strerror renders as EPERM's "Operation not
// permitted"; that would mislead whoever reads the message.
std::string DecoderErrorText(int error) {
  return error == AVERROR(EPERM) ? "decoder error" : AvErrorText(error);
}

// Feeds the whole file as one packet and takes the one frame it yields.
absl::StatusOr<FramePtr> DecodeOneFrame(AVCodecContext* ctx, const ImageHeader& header,
                                        absl::string_view bytes) {
  PacketPtr packet(av_packet_alloc());
  FramePtr frame(av_frame_alloc());
  if (packet == nullptr || frame == nullptr) {
    return absl::ResourceExhaustedError("image: out of memory");
  }
  // av_new_packet adds the zeroed tail padding that libavcodec's bitstream readers rely on.
  if (int err = av_new_packet(packet.get(), static_cast<int>(bytes.size())); err < 0) {
    return AvInternalError("image: av_new_packet", err);
  }
  std::memcpy(packet->data, bytes.data(), bytes.size());

  if (int err = avcodec_send_packet(ctx, packet.get()); err < 0) {
    return Corrupt(header.format, DecoderErrorText(err));
  }
  int err = avcodec_receive_frame(ctx, frame.get());
  if (err == AVERROR(EAGAIN)) {
    avcodec_send_packet(ctx, nullptr);  // drain
    err = avcodec_receive_frame(ctx, frame.get());
  }
  if (err < 0) {
    return Corrupt(header.format,
                   err == AVERROR_EOF ? "no picture decoded" : DecoderErrorText(err));
  }
  if (frame->decode_error_flags != 0) return Corrupt(header.format, "decode errors in picture");
  return frame;
}

// Encodes one RGB24 image with a libavcodec image encoder configured by `configure`.
template <typename Configure>
absl::StatusOr<std::string> EncodeStill(const RgbImage& image, AVCodecID codec_id,
                                        AVPixelFormat pix_fmt, Configure configure) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    return absl::InvalidArgumentError(absl::StrCat("image: invalid RgbImage (", image.width, "x",
                                                   image.height, " with ", image.pixels.size(),
                                                   " bytes)"));
  }
  internal::InitLibavLogging();
  const AVCodec* codec = avcodec_find_encoder(codec_id);
  if (codec == nullptr) {
    return absl::InternalError(
        absl::StrCat("image: no ", avcodec_get_name(codec_id), " encoder in this FFmpeg build"));
  }
  CodecContextPtr ctx(avcodec_alloc_context3(codec));
  FramePtr frame(av_frame_alloc());
  PacketPtr packet(av_packet_alloc());
  if (ctx == nullptr || frame == nullptr || packet == nullptr) {
    return absl::ResourceExhaustedError("image: out of memory");
  }
  ctx->width = image.width;
  ctx->height = image.height;
  ctx->pix_fmt = pix_fmt;
  ctx->time_base = AVRational{1, 25};
  ctx->thread_count = 1;
  configure(*ctx, *frame);
  if (int err = avcodec_open2(ctx.get(), codec, nullptr); err < 0) {
    return AvInternalError("image: cannot open encoder", err);
  }

  frame->format = pix_fmt;
  frame->width = image.width;
  frame->height = image.height;
  if (int err = av_frame_get_buffer(frame.get(), 0); err < 0) {
    return AvInternalError("image: av_frame_get_buffer", err);
  }
  SwsContextPtr sws(sws_getContext(
      image.width, image.height, AV_PIX_FMT_RGB24, image.width, image.height, pix_fmt,
      SWS_BILINEAR | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, nullptr, nullptr, nullptr));
  if (sws == nullptr) return absl::InternalError("image: cannot create swscale context");
  std::vector<uint8_t> scratch;
  if (absl::Status s = internal::ScaleRgb24(sws.get(), image.pixels.data(), image.width,
                                            image.height, frame->data, frame->linesize, scratch);
      !s.ok()) {
    return absl::InternalError(absl::StrCat("image: ", s.message()));
  }

  if (int err = avcodec_send_frame(ctx.get(), frame.get()); err < 0) {
    return AvInternalError("image: encode", err);
  }
  avcodec_send_frame(ctx.get(), nullptr);
  if (int err = avcodec_receive_packet(ctx.get(), packet.get()); err < 0) {
    return AvInternalError("image: encode", err);
  }
  return std::string(reinterpret_cast<const char*>(packet->data), packet->size);
}

}  // namespace

absl::StatusOr<RgbImage> DecodeImage(absl::string_view bytes, const ImageDecodeLimits& limits) {
  absl::StatusOr<ImageFormat> format = SniffFormat(bytes);
  if (!format.ok()) return format.status();
  absl::StatusOr<ImageHeader> header =
      *format == ImageFormat::kPng ? ParsePngHeader(bytes) : ParseJpegHeader(bytes);
  if (!header.ok()) return header.status();
  if (absl::Status s = CheckLimits(header->width, header->height, limits); !s.ok()) return s;
  if (bytes.size() > static_cast<size_t>(INT32_MAX) - AV_INPUT_BUFFER_PADDING_SIZE) {
    return absl::InvalidArgumentError(absl::StrCat("image: ", bytes.size(), " bytes is too large"));
  }

  internal::ScopedQuietLibavLog quiet;
  absl::StatusOr<CodecContextPtr> ctx = OpenDecoder(*header, limits);
  if (!ctx.ok()) return ctx.status();
  absl::StatusOr<FramePtr> frame = DecodeOneFrame(ctx->get(), *header, bytes);
  if (!frame.ok()) return frame.status();
  if (absl::Status s = CheckLimits((*frame)->width, (*frame)->height, limits); !s.ok()) return s;
  SwsContextPtr sws;
  return internal::FrameToRgb(**frame, sws);
}

absl::StatusOr<std::string> EncodePng(const RgbImage& image) {
  return EncodeStill(image, AV_CODEC_ID_PNG, AV_PIX_FMT_RGB24, [](AVCodecContext&, AVFrame&) {});
}

absl::StatusOr<std::string> EncodeJpeg(const RgbImage& image, int qscale) {
  if (qscale < 2 || qscale > 31) {
    return absl::InvalidArgumentError(
        absl::StrCat("image: JPEG qscale ", qscale, " is outside 2..31"));
  }
  // YUVJ420P is full-range BT.601, what JFIF readers assume. Fixed quantiser: the frame's
  // quality (in lambda units) is what the mjpeg encoder actually reads.
  return EncodeStill(image, AV_CODEC_ID_MJPEG, AV_PIX_FMT_YUVJ420P,
                     [qscale](AVCodecContext& ctx, AVFrame& frame) {
                       ctx.flags |= AV_CODEC_FLAG_QSCALE;
                       ctx.global_quality = qscale * FF_QP2LAMBDA;
                       frame.quality = ctx.global_quality;
                     });
}

}  // namespace wmserve::media
