// Internal to wmserve_media: RAII owners for libav objects, error text, logging policy and the
// frame -> RGB24 conversion shared by the image and video decoders. Not part of the public API;
// everything here is header-only (inline) so the library's target needs no extra source file.
#ifndef WMSERVE_WORKER_MEDIA_LIBAV_UTIL_H_
#define WMSERVE_WORKER_MEDIA_LIBAV_UTIL_H_

#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/media/rgb_image.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavformat/avio.h>
#include <libavutil/error.h>
#include <libavutil/frame.h>
#include <libavutil/log.h>
#include <libavutil/mem.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

namespace wmserve::media::internal {

// ---- RAII owners. Every libav object is held by one of these from the moment it exists, so an
// early return on any error path frees it.

struct CodecContextDeleter {
  void operator()(AVCodecContext* ctx) const { avcodec_free_context(&ctx); }
};
struct FrameDeleter {
  void operator()(AVFrame* frame) const { av_frame_free(&frame); }
};
struct PacketDeleter {
  void operator()(AVPacket* packet) const { av_packet_free(&packet); }
};
struct SwsContextDeleter {
  void operator()(SwsContext* ctx) const { sws_freeContext(ctx); }
};
// Custom-IO contexts own a buffer that libavformat may have reallocated, so free it through the
// context rather than keeping our own pointer to it.
struct AvioContextDeleter {
  void operator()(AVIOContext* ctx) const {
    if (ctx == nullptr) return;
    av_freep(&ctx->buffer);
    avio_context_free(&ctx);
  }
};
// Muxer contexts: avformat_free_context also runs the muxer's deinit, so a muxer whose trailer is
// never written (we never write one) still releases its fragment buffers.
struct OutputFormatDeleter {
  void operator()(AVFormatContext* ctx) const { avformat_free_context(ctx); }
};
struct InputFormatDeleter {
  void operator()(AVFormatContext* ctx) const { avformat_close_input(&ctx); }
};

using CodecContextPtr = std::unique_ptr<AVCodecContext, CodecContextDeleter>;
using FramePtr = std::unique_ptr<AVFrame, FrameDeleter>;
using PacketPtr = std::unique_ptr<AVPacket, PacketDeleter>;
using SwsContextPtr = std::unique_ptr<SwsContext, SwsContextDeleter>;
using AvioContextPtr = std::unique_ptr<AVIOContext, AvioContextDeleter>;
using OutputFormatPtr = std::unique_ptr<AVFormatContext, OutputFormatDeleter>;
using InputFormatPtr = std::unique_ptr<AVFormatContext, InputFormatDeleter>;

// av_err2str is a C compound-literal macro, unusable from C++.
inline std::string AvErrorText(int error) {
  char text[AV_ERROR_MAX_STRING_SIZE] = {};
  if (av_strerror(error, text, sizeof(text)) < 0) {
    return absl::StrCat("libav error ", error);
  }
  return text;
}

// INTERNAL status for a failed libav call: "<what>: <av_strerror text>".
inline absl::Status AvInternalError(absl::string_view what, int error) {
  return absl::InternalError(absl::StrCat(what, ": ", AvErrorText(error)));
}

// ---- Logging policy.
//
// The image decoder is fed untrusted bytes by a server, and libavcodec logs every malformed
// chunk at AV_LOG_ERROR; that noise belongs in the returned Status, not on stderr. So decoding
// runs under ScopedQuietLibavLog, which mutes libav on the calling thread only (our decoders run
// single-threaded, so every message they produce is logged from that thread). Elsewhere messages
// at AV_LOG_ERROR and above still reach stderr; x264's per-run statistics (AV_LOG_INFO) do not.

inline thread_local int quiet_libav_log_depth = 0;

inline void QuietAwareLogCallback(void* avcl, int level, const char* format, va_list args) {
  if (quiet_libav_log_depth > 0) return;
  av_log_default_callback(avcl, level, format, args);
}

// Idempotent and thread-safe. Lowers the global level to AV_LOG_ERROR unless the process has
// already chosen something quieter.
inline void InitLibavLogging() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (av_log_get_level() > AV_LOG_ERROR) av_log_set_level(AV_LOG_ERROR);
    av_log_set_callback(&QuietAwareLogCallback);
  });
}

class ScopedQuietLibavLog {
 public:
  ScopedQuietLibavLog() {
    InitLibavLogging();
    ++quiet_libav_log_depth;
  }
  ~ScopedQuietLibavLog() { --quiet_libav_log_depth; }
  ScopedQuietLibavLog(const ScopedQuietLibavLog&) = delete;
  ScopedQuietLibavLog& operator=(const ScopedQuietLibavLog&) = delete;
};

// ---- Tightly packed RGB24 -> anything.

// Converts one width x height RGB24 picture (stride width * 3) with `sws` into `dst`.
//
// swscale's SIMD row readers load whole vectors, up to a few dozen bytes past the end of a row
// (valgrind shows 16-byte loads ending 12 bytes past a 160-pixel row). For every row but the
// last that lands inside the same picture; past the last row it would read outside the caller's
// buffer, which can fault when the buffer ends at a page boundary. So all rows but the last are
// converted in place and the last row goes through `scratch`, a padded copy. Slices are legal
// here because RGB has no vertical chroma subsampling; the output is identical to one call.
inline absl::Status ScaleRgb24(SwsContext* sws, const uint8_t* rgb, int width, int height,
                               uint8_t* const dst[], const int dst_stride[],
                               std::vector<uint8_t>& scratch) {
  constexpr size_t kRowPadding = 256;
  const int stride = width * 3;
  const int stride_array[4] = {stride, 0, 0, 0};
  if (height > 1) {
    const uint8_t* const body[4] = {rgb, nullptr, nullptr, nullptr};
    if (int err = sws_scale(sws, body, stride_array, 0, height - 1, dst, dst_stride); err < 0) {
      return AvInternalError("sws_scale", err);
    }
  }
  if (scratch.size() < static_cast<size_t>(stride) + kRowPadding) {
    scratch.assign(static_cast<size_t>(stride) + kRowPadding, 0);
  }
  std::memcpy(scratch.data(), rgb + static_cast<size_t>(stride) * (height - 1), stride);
  const uint8_t* const last_row[4] = {scratch.data(), nullptr, nullptr, nullptr};
  if (int err = sws_scale(sws, last_row, stride_array, height - 1, 1, dst, dst_stride); err < 0) {
    return AvInternalError("sws_scale", err);
  }
  return absl::OkStatus();
}

// ---- Decoded frame -> RGB24.

// True for pixel formats whose samples are luma/chroma (the ones where the YUV matrix and range
// matter); false for RGB, palette and gray formats.
inline bool IsYuvFormat(AVPixelFormat format) {
  const AVPixFmtDescriptor* desc = av_pix_fmt_desc_get(format);
  return desc != nullptr && desc->nb_components >= 3 &&
         (desc->flags & (AV_PIX_FMT_FLAG_RGB | AV_PIX_FMT_FLAG_PAL)) == 0;
}

// Copies `frame` (any pixel format swscale reads) into an RgbImage. `sws` is a cache reused
// across calls with the same geometry. The YUV matrix (BT.709 vs BT.601) and range come from the
// frame's tags, so video that the encoder tagged BT.709 converts back with the matching matrix.
inline absl::StatusOr<RgbImage> FrameToRgb(const AVFrame& frame, SwsContextPtr& sws) {
  const auto format = static_cast<AVPixelFormat>(frame.format);
  if (frame.width <= 0 || frame.height <= 0 || av_pix_fmt_desc_get(format) == nullptr) {
    return absl::InternalError("decoder returned a frame without size or pixel format");
  }
  RgbImage image;
  image.width = frame.width;
  image.height = frame.height;
  const size_t row_bytes = static_cast<size_t>(frame.width) * 3;
  image.pixels.resize(row_bytes * static_cast<size_t>(frame.height));

  // Lossless fast path (PNG's usual output): straight row copy.
  if (format == AV_PIX_FMT_RGB24) {
    for (int y = 0; y < frame.height; ++y) {
      std::memcpy(image.pixels.data() + row_bytes * y, frame.data[0] + frame.linesize[0] * y,
                  row_bytes);
    }
    return image;
  }

  // SWS_FULL_CHR_H_INT interpolates chroma per output pixel instead of replicating it; the
  // quality gain matters more than speed on this (test / still image) path.
  sws.reset(sws_getCachedContext(
      sws.release(), frame.width, frame.height, format, frame.width, frame.height, AV_PIX_FMT_RGB24,
      SWS_BILINEAR | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, nullptr, nullptr, nullptr));
  if (sws == nullptr) {
    return absl::InternalError(
        absl::StrCat("swscale cannot convert ", av_get_pix_fmt_name(format), " to rgb24"));
  }
  if (IsYuvFormat(format)) {
    int* inv_table = nullptr;
    int* table = nullptr;
    int src_range = 0, dst_range = 0, brightness = 0, contrast = 0, saturation = 0;
    if (sws_getColorspaceDetails(sws.get(), &inv_table, &src_range, &table, &dst_range, &brightness,
                                 &contrast, &saturation) >= 0) {
      const int matrix = frame.colorspace == AVCOL_SPC_BT709 ? SWS_CS_ITU709 : SWS_CS_DEFAULT;
      // YUVJ formats already imply full range (swscale set src_range for them).
      const int full_range = src_range || frame.color_range == AVCOL_RANGE_JPEG;
      sws_setColorspaceDetails(sws.get(), sws_getCoefficients(matrix), full_range, table, dst_range,
                               brightness, contrast, saturation);
    }
  }

  // Scale into a libav-allocated (aligned, padded) frame, then copy rows out, so swscale's SIMD
  // never writes past the end of our tightly packed vector.
  FramePtr rgb(av_frame_alloc());
  if (rgb == nullptr) return absl::ResourceExhaustedError("out of memory allocating a frame");
  rgb->format = AV_PIX_FMT_RGB24;
  rgb->width = frame.width;
  rgb->height = frame.height;
  if (int err = av_frame_get_buffer(rgb.get(), 0); err < 0) {
    return AvInternalError("av_frame_get_buffer", err);
  }
  if (int err = sws_scale(sws.get(), frame.data, frame.linesize, 0, frame.height, rgb->data,
                          rgb->linesize);
      err < 0) {
    return AvInternalError("sws_scale", err);
  }
  for (int y = 0; y < frame.height; ++y) {
    std::memcpy(image.pixels.data() + row_bytes * y, rgb->data[0] + rgb->linesize[0] * y,
                row_bytes);
  }
  return image;
}

}  // namespace wmserve::media::internal

#endif  // WMSERVE_WORKER_MEDIA_LIBAV_UTIL_H_
