// H.264 (libx264) into fragmented MP4 (CMAF-style), entirely in memory.
//
// Output layout: one init segment (ftyp + moov with mvex) available right after Create(), then
// one media segment (moof + mdat) per EncodeSegment() call. Every segment starts with an IDR
// frame, so init + any single segment decodes on its own (re-attach, seeking, MSE append).
// Timestamps are continuous across segments (tfdt = frames so far), so the concatenation
// init + seg0 + seg1 + ... is a normal progressive fMP4 file that ffplay/browsers play while it
// grows. No trailer (mfra) is ever written.
//
// Thread-compatible: one encoder per rollout, used from one thread (the rollout's encoder
// thread). No torch.
#ifndef WMSERVE_WORKER_MEDIA_FMP4_ENCODER_H_
#define WMSERVE_WORKER_MEDIA_FMP4_ENCODER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace wmserve::media {

enum class EncoderPreset { kFast, kBalanced, kHigh };  // x264 ultrafast / veryfast / medium
const char* X264PresetName(EncoderPreset preset);

struct EncoderOptions {
  int width = 1280;   // even
  int height = 704;   // even
  double fps = 16;    // (0, 240]
  EncoderPreset preset = EncoderPreset::kBalanced;
  int crf = 23;       // 0..51
  int threads = 0;    // x264 threads, 0 = auto
};

class Fmp4Encoder {
 public:
  // INVALID_ARGUMENT for bad options, INTERNAL if libx264/the mp4 muxer cannot be opened.
  static absl::StatusOr<std::unique_ptr<Fmp4Encoder>> Create(const EncoderOptions& options);
  ~Fmp4Encoder();
  Fmp4Encoder(const Fmp4Encoder&) = delete;
  Fmp4Encoder& operator=(const Fmp4Encoder&) = delete;

  // ftyp + moov.
  const std::string& init_segment() const;
  // RFC 6381 MIME type, e.g. `video/mp4; codecs="avc1.64001f"` (profile/level from the SPS).
  const std::string& mime_type() const;

  // Encodes `frame_count` RGB24 frames (frame-major, width*height*3 bytes each) into one media
  // segment starting with an IDR frame. frame_count >= 1.
  absl::StatusOr<std::string> EncodeSegment(const uint8_t* rgb, int frame_count);

  int64_t frames_encoded() const;

 private:
  struct Impl;
  explicit Fmp4Encoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace wmserve::media

#endif  // WMSERVE_WORKER_MEDIA_FMP4_ENCODER_H_
