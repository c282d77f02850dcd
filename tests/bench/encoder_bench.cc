// Media hot paths at the serving resolution (1280x704): fMP4/H.264 encoding per x264 preset, in
// 16-frame segments as a rollout streams them, and decoding an uploaded PNG / JPEG.
//
// Wall-clock rates (UseRealTime): x264 runs its own threads, so the calling thread's CPU time
// would overstate throughput. Iteration counts are fixed and small so the whole binary finishes
// in well under a minute on 2 cores.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "worker/media/fmp4_encoder.h"
#include "worker/media/image_io.h"
#include "worker/media/rgb_image.h"

namespace wmserve::media {
namespace {

constexpr int kWidth = 1280;
constexpr int kHeight = 704;
constexpr int kSegmentFrames = 16;
constexpr int kMargin = 256;  // how far the camera pans over the texture

// A texture larger than the frame: smooth colour fields, a mid-frequency pattern and a little
// noise, so x264 sees real detail and real motion vectors (a flat colour would be ~free).
class PanningTexture {
 public:
  PanningTexture() : width_(kWidth + kMargin), height_(kHeight + kMargin) {
    texture_.resize(static_cast<size_t>(width_) * height_ * 3);
    std::mt19937 rng(42);
    std::uniform_int_distribution<int> noise(-6, 6);
    for (int y = 0; y < height_; ++y) {
      for (int x = 0; x < width_; ++x) {
        const double smooth = 60 * std::sin(x * 0.011) * std::cos(y * 0.017);
        const double pattern = 35 * std::sin(x * 0.21 + 3 * std::sin(y * 0.05)) *
                               std::sin(y * 0.13 + 2 * std::cos(x * 0.03));
        uint8_t* p = &texture_[(static_cast<size_t>(y) * width_ + x) * 3];
        p[0] = Clamp(128 + smooth + pattern + noise(rng));
        p[1] = Clamp(120 - 0.5 * smooth + pattern + noise(rng));
        p[2] = Clamp(110 + 0.8 * pattern - 0.3 * smooth + noise(rng));
      }
    }
  }

  // Frame `t` of a diagonal pan: a kWidth x kHeight crop whose origin moves 3 px right and
  // 2 px down per frame (wrapping inside the margin).
  void Frame(int t, uint8_t* out) const {
    const int ox = (3 * t) % kMargin, oy = (2 * t) % kMargin;
    for (int y = 0; y < kHeight; ++y) {
      const uint8_t* src = &texture_[(static_cast<size_t>(y + oy) * width_ + ox) * 3];
      std::copy(src, src + kWidth * 3, out + static_cast<size_t>(y) * kWidth * 3);
    }
  }

 private:
  static uint8_t Clamp(double v) {
    return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : std::lround(v));
  }
  int width_, height_;
  std::vector<uint8_t> texture_;
};

const PanningTexture& Texture() {
  static const PanningTexture* texture = new PanningTexture();
  return *texture;
}

// Two consecutive 16-frame segments of the pan, frame-major RGB24.
const std::vector<uint8_t>& SegmentFrames() {
  static const std::vector<uint8_t>* frames = [] {
    constexpr size_t kFrameBytes = static_cast<size_t>(kWidth) * kHeight * 3;
    auto* v = new std::vector<uint8_t>(kFrameBytes * 2 * kSegmentFrames);
    for (int t = 0; t < 2 * kSegmentFrames; ++t) Texture().Frame(t, v->data() + kFrameBytes * t);
    return v;
  }();
  return *frames;
}

void BM_EncodeSegment(benchmark::State& state, EncoderPreset preset) {
  EncoderOptions options;
  options.width = kWidth;
  options.height = kHeight;
  options.fps = 16;
  options.preset = preset;
  auto encoder = Fmp4Encoder::Create(options);
  if (!encoder.ok()) {
    state.SkipWithError(std::string(encoder.status().message()).c_str());
    return;
  }
  const std::vector<uint8_t>& frames = SegmentFrames();
  const size_t segment_bytes = frames.size() / 2;
  // Untimed warm-up: x264's first frames pay one-off allocation costs.
  if (!(*encoder)->EncodeSegment(frames.data(), kSegmentFrames).ok()) {
    state.SkipWithError("warm-up segment failed");
    return;
  }
  int64_t segments = 0;
  double output_bytes = 0;
  for (auto _ : state) {
    const uint8_t* rgb = frames.data() + segment_bytes * (segments % 2);
    auto segment = (*encoder)->EncodeSegment(rgb, kSegmentFrames);
    if (!segment.ok()) {
      state.SkipWithError(std::string(segment.status().message()).c_str());
      return;
    }
    output_bytes += static_cast<double>(segment->size());
    ++segments;
  }
  state.SetItemsProcessed(segments * kSegmentFrames);
  state.counters["frames_per_s"] = benchmark::Counter(
      static_cast<double>(segments * kSegmentFrames), benchmark::Counter::kIsRate);
  state.counters["kB_per_segment"] = output_bytes / 1000.0 / static_cast<double>(segments);
}

BENCHMARK_CAPTURE(BM_EncodeSegment, fast_ultrafast, EncoderPreset::kFast)
    ->Iterations(8)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_EncodeSegment, balanced_veryfast, EncoderPreset::kBalanced)
    ->Iterations(5)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_EncodeSegment, high_medium, EncoderPreset::kHigh)
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

RgbImage TextureFrame() {
  RgbImage image{kWidth, kHeight, std::vector<uint8_t>(static_cast<size_t>(kWidth) * kHeight * 3)};
  Texture().Frame(0, image.pixels.data());
  return image;
}

void BM_DecodeImage(benchmark::State& state, bool png) {
  const RgbImage image = TextureFrame();
  auto bytes = png ? EncodePng(image) : EncodeJpeg(image);
  if (!bytes.ok()) {
    state.SkipWithError(std::string(bytes.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    auto decoded = DecodeImage(*bytes);
    if (!decoded.ok()) {
      state.SkipWithError(std::string(decoded.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(decoded->pixels.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes->size()));
  state.counters["input_kB"] = static_cast<double>(bytes->size()) / 1000.0;
}

BENCHMARK_CAPTURE(BM_DecodeImage, png_1280x704, true)
    ->MinTime(0.5)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_DecodeImage, jpeg_1280x704, false)
    ->MinTime(0.5)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace wmserve::media

BENCHMARK_MAIN();
