// Decodes an in-memory MP4 / fragmented MP4 (what a client received) back to RGB frames with
// libavformat + libavcodec. Used by tests, benchmarks and `wmctl verify`. No torch.
#ifndef WMSERVE_WORKER_MEDIA_VIDEO_DECODER_H_
#define WMSERVE_WORKER_MEDIA_VIDEO_DECODER_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/media/rgb_image.h"

namespace wmserve::media {

struct DecodedVideo {
  int width = 0;
  int height = 0;
  double fps = 0;                 // from the stream's average frame rate, 0 if unknown
  std::string codec_name;         // e.g. "h264"
  std::vector<RgbImage> frames;   // in presentation order
  std::vector<bool> key_frames;   // key_frames[i]: frame i was a key frame
};

absl::StatusOr<DecodedVideo> DecodeVideo(absl::string_view container_bytes);

// Peak signal-to-noise ratio in dB over all RGB samples (identical images: +inf).
// INVALID_ARGUMENT if sizes differ.
absl::StatusOr<double> Psnr(const RgbImage& a, const RgbImage& b);

}  // namespace wmserve::media

#endif  // WMSERVE_WORKER_MEDIA_VIDEO_DECODER_H_
