// Still-image decoding and encoding (PNG, JPEG) through libavcodec. No torch.
#ifndef WMSERVE_WORKER_MEDIA_IMAGE_IO_H_
#define WMSERVE_WORKER_MEDIA_IMAGE_IO_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/media/rgb_image.h"

namespace wmserve::media {

// Limits applied while decoding untrusted bytes.
struct ImageDecodeLimits {
  int max_width = 8192;
  int max_height = 8192;
};

// Decodes PNG or JPEG bytes (detected from the signature) to RGB24. Any other format, empty
// input, truncated or corrupt data, or a size over `limits` is INVALID_ARGUMENT with a message
// that says which ("image: not PNG or JPEG (first bytes 47 49 46 38)", "image: empty", ...).
absl::StatusOr<RgbImage> DecodeImage(absl::string_view bytes, const ImageDecodeLimits& limits = {});

// Encodes RGB24 to PNG bytes (lossless). Used for samples, debugging and tests.
absl::StatusOr<std::string> EncodePng(const RgbImage& image);

// Encodes RGB24 to baseline JPEG bytes, quality 2..31 in FFmpeg's qscale (2 = best).
absl::StatusOr<std::string> EncodeJpeg(const RgbImage& image, int qscale = 3);

}  // namespace wmserve::media

#endif  // WMSERVE_WORKER_MEDIA_IMAGE_IO_H_
