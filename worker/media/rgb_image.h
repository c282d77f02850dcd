// Plain 8-bit RGB image shared by the media code and the model interface.
#ifndef WMSERVE_WORKER_MEDIA_RGB_IMAGE_H_
#define WMSERVE_WORKER_MEDIA_RGB_IMAGE_H_

#include <cstdint>
#include <vector>

namespace wmserve::media {

// Interleaved RGB24, row-major, `pixels.size() == width * height * 3`.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;
};

}  // namespace wmserve::media

#endif  // WMSERVE_WORKER_MEDIA_RGB_IMAGE_H_
