// Tests for the `warp` model: geometry against closed-form predictions computed here, the
// streaming contract (chunks, progress, cancellation), options and device parsing.
//
// Pixel convention (as documented in warp_model.cc): pixel (i, j) has its centre at continuous
// coordinates (i + 0.5, j + 0.5); intrinsics use the same convention.
#include "worker/models/warp_model.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model.h"

namespace wmserve::worker {
namespace {

using ::testing::HasSubstr;

constexpr double kPi = 3.14159265358979323846;
constexpr int kBackground = 20;

// ---------------------------------------------------------------------------------------------
// Small double-precision geometry, independent of the model's own code.

using Mat3 = std::array<double, 9>;  // row-major
using Vec3 = std::array<double, 3>;

Mat3 Mul(const Mat3& a, const Mat3& b) {
  Mat3 out{};
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {
      for (int k = 0; k < 3; ++k) out[r * 3 + c] += a[r * 3 + k] * b[k * 3 + c];
    }
  }
  return out;
}

Mat3 Transposed(const Mat3& a) { return {a[0], a[3], a[6], a[1], a[4], a[7], a[2], a[5], a[8]}; }

Vec3 Apply(const Mat3& a, const Vec3& v) {
  return {a[0] * v[0] + a[1] * v[1] + a[2] * v[2], a[3] * v[0] + a[4] * v[1] + a[5] * v[2],
          a[6] * v[0] + a[7] * v[1] + a[8] * v[2]};
}

double Rad(double degrees) { return degrees * kPi / 180.0; }

// OpenCV axes: yaw about +y (down), pitch about +x (right), roll about +z (forward).
Mat3 RotY(double a) { return {std::cos(a), 0, std::sin(a), 0, 1, 0, -std::sin(a), 0, std::cos(a)}; }
Mat3 RotX(double a) { return {1, 0, 0, 0, std::cos(a), -std::sin(a), 0, std::sin(a), std::cos(a)}; }
Mat3 RotZ(double a) { return {std::cos(a), -std::sin(a), 0, std::sin(a), std::cos(a), 0, 0, 0, 1}; }
const Mat3 kIdentity3 = {1, 0, 0, 0, 1, 0, 0, 0, 1};

struct Rigid {
  Mat3 r = kIdentity3;
  Vec3 t = {0, 0, 0};
};

Rigid Compose(const Rigid& a, const Rigid& b) {
  const Vec3 rt = Apply(a.r, b.t);
  return {Mul(a.r, b.r), {a.t[0] + rt[0], a.t[1] + rt[1], a.t[2] + rt[2]}};
}

std::array<double, 16> ToC2w(const Rigid& pose) {
  const Mat3& r = pose.r;
  return {r[0], r[1], r[2], pose.t[0], r[3], r[4], r[5], pose.t[1],
          r[6], r[7], r[8], pose.t[2], 0,    0,    0,    1};
}

// An arbitrary "world" placement of camera 0, so every test also exercises P_0^-1 P_i.
Rigid WorldOrigin() {
  return {Mul(RotZ(Rad(-20)), Mul(RotX(Rad(35)), RotY(Rad(70)))), {3.0, -1.5, 7.25}};
}

struct Pinhole {
  double fx, fy, cx, cy;
};

Mat3 KMatrix(const Pinhole& k) { return {k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1}; }
Mat3 KInverse(const Pinhole& k) {
  return {1 / k.fx, 0, -k.cx / k.fx, 0, 1 / k.fy, -k.cy / k.fy, 0, 0, 1};
}

struct Point {
  double x, y;
};

// Where a source pixel shows up in a camera rotated by `r` (c2w, relative to camera 0): the
// inverse of the model's target->source homography K_0 R K^-1.
Point RotatedProjection(const Point& source, const Mat3& r, const Pinhole& k0, const Pinhole& k) {
  const Mat3 h = Mul(KMatrix(k), Mul(Transposed(r), KInverse(k0)));
  const Vec3 p = Apply(h, {source.x, source.y, 1});
  return {p[0] / p[2], p[1] / p[2]};
}

// ---------------------------------------------------------------------------------------------
// Images and features.

// Dark background with Gaussian dots (peak 255) centred at continuous positions `dots`.
RgbImage DotImage(int width, int height, const std::vector<Point>& dots, double sigma) {
  RgbImage image{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  const int reach = static_cast<int>(std::ceil(4 * sigma));
  std::vector<double> value(static_cast<size_t>(width) * height, kBackground);
  for (const Point& dot : dots) {
    for (int j = std::max(0, static_cast<int>(dot.y) - reach);
         j <= std::min(height - 1, static_cast<int>(dot.y) + reach); ++j) {
      for (int i = std::max(0, static_cast<int>(dot.x) - reach);
           i <= std::min(width - 1, static_cast<int>(dot.x) + reach); ++i) {
        const double dx = i + 0.5 - dot.x, dy = j + 0.5 - dot.y;
        value[j * width + i] += (255 - kBackground) * std::exp(-(dx * dx + dy * dy) /
                                                               (2 * sigma * sigma));
      }
    }
  }
  for (size_t p = 0; p < value.size(); ++p) {
    const auto v = static_cast<uint8_t>(std::lround(std::min(255.0, value[p])));
    image.pixels[p * 3] = image.pixels[p * 3 + 1] = image.pixels[p * 3 + 2] = v;
  }
  return image;
}

// Deterministic high-frequency colour noise: any sub-pixel misalignment shows up.
RgbImage NoiseImage(int width, int height) {
  RgbImage image{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  uint32_t state = 12345;
  for (uint8_t& v : image.pixels) {
    state = state * 1664525u + 1013904223u;
    v = static_cast<uint8_t>(state >> 24);
  }
  return image;
}

// A view of one output frame.
struct Frame {
  const uint8_t* rgb;
  int width, height;
  int at(int x, int y, int c) const { return rgb[(static_cast<size_t>(y) * width + x) * 3 + c]; }
};

// Intensity-weighted centroid (above the background) of the dot near `guess`, in continuous
// coordinates; nullopt if there is no dot there.
std::optional<Point> DotCentroid(const Frame& frame, const Point& guess, int radius) {
  double sum = 0, sx = 0, sy = 0;
  const int gx = static_cast<int>(guess.x), gy = static_cast<int>(guess.y);
  for (int y = std::max(0, gy - radius); y <= std::min(frame.height - 1, gy + radius); ++y) {
    for (int x = std::max(0, gx - radius); x <= std::min(frame.width - 1, gx + radius); ++x) {
      const double w = std::max(0, frame.at(x, y, 1) - kBackground);
      sum += w;
      sx += w * (x + 0.5);
      sy += w * (y + 0.5);
    }
  }
  if (sum < 500) return std::nullopt;
  return Point{sx / sum, sy / sum};
}

bool IsBlack(const Frame& frame, int x, int y) {
  return frame.at(x, y, 0) == 0 && frame.at(x, y, 1) == 0 && frame.at(x, y, 2) == 0;
}

bool WellInside(const Point& p, int width, int height, double margin) {
  return p.x > margin && p.y > margin && p.x < width - margin && p.y < height - margin;
}

// ---------------------------------------------------------------------------------------------
// Rollout plumbing.

class FakeControl : public RolloutControl {
 public:
  // cancelled() turns true once `cancel_after_frames` backbone steps have been reported.
  explicit FakeControl(int cancel_after_frames = -1) : cancel_after_(cancel_after_frames) {}

  bool cancelled() const override { return cancel_after_ >= 0 && frames_ >= cancel_after_; }
  void OnStep(ModelStage stage, int step, int total_steps) override {
    if (stage == ModelStage::kBackbone) {
      ++frames_;
      steps_.push_back({step, total_steps});
    }
  }
  void AddStageTime(ModelStage stage, absl::Duration elapsed) override {
    stage_time_[stage] += elapsed;
    ++stage_calls_[stage];
  }

  const std::vector<std::pair<int, int>>& steps() const { return steps_; }
  int stage_calls(ModelStage stage) const {
    auto it = stage_calls_.find(stage);
    return it == stage_calls_.end() ? 0 : it->second;
  }

 private:
  int cancel_after_;
  int frames_ = 0;
  std::vector<std::pair<int, int>> steps_;
  std::map<ModelStage, absl::Duration> stage_time_;
  std::map<ModelStage, int> stage_calls_;
};

WarpModelConfig Config(const std::string& device, int frames_per_chunk = 16) {
  WarpModelConfig config;
  config.device = device;
  config.frames_per_chunk = frames_per_chunk;
  return config;
}

std::unique_ptr<Model> CpuModel(int frames_per_chunk = 16) {
  absl::StatusOr<std::unique_ptr<Model>> model = CreateWarpModel(Config("cpu", frames_per_chunk));
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

CameraFrame Camera(const Rigid& pose, const Pinhole& k) {
  CameraFrame camera;
  camera.c2w = ToC2w(pose);
  camera.fx = k.fx;
  camera.fy = k.fy;
  camera.cx = k.cx;
  camera.cy = k.cy;
  return camera;
}

// Camera 0 at WorldOrigin(), then one frame per relative pose, all with intrinsics `k`.
RolloutSpec MakeSpec(RgbImage image, int width, int height, const Pinhole& k,
                     const std::vector<Rigid>& relative_poses) {
  RolloutSpec spec;
  spec.image = std::move(image);
  spec.width = width;
  spec.height = height;
  const Rigid origin = WorldOrigin();
  for (const Rigid& relative : relative_poses) {
    spec.cameras.push_back(Camera(Compose(origin, relative), k));
  }
  return spec;
}

// All frames of a rollout, concatenated frame-major.
absl::StatusOr<std::vector<uint8_t>> RenderAll(Model& model, const RolloutSpec& spec) {
  FakeControl control;
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout = model.StartRollout(spec, control);
  if (!rollout.ok()) return rollout.status();
  std::vector<uint8_t> all;
  while (true) {
    absl::StatusOr<std::optional<FrameChunk>> chunk = (*rollout)->NextChunk(control);
    if (!chunk.ok()) return chunk.status();
    if (!chunk->has_value()) return all;
    all.insert(all.end(), (*chunk)->rgb.begin(), (*chunk)->rgb.end());
  }
}

Frame FrameOf(const std::vector<uint8_t>& all, int index, int width, int height) {
  return {all.data() + static_cast<size_t>(index) * width * height * 3, width, height};
}

// Checks that every source dot whose predicted position stays well inside the frame is found
// within 1 px of it; returns how many were checked.
int ExpectDotsAt(const Frame& frame, const std::vector<Point>& predicted, int radius) {
  int checked = 0;
  for (const Point& p : predicted) {
    if (!WellInside(p, frame.width, frame.height, radius + 2)) continue;
    std::optional<Point> found = DotCentroid(frame, p, radius);
    EXPECT_TRUE(found.has_value()) << "no dot near (" << p.x << ", " << p.y << ")";
    if (!found) continue;
    EXPECT_NEAR(found->x, p.x, 1.0) << "dot predicted at (" << p.x << ", " << p.y << ")";
    EXPECT_NEAR(found->y, p.y, 1.0) << "dot predicted at (" << p.x << ", " << p.y << ")";
    ++checked;
  }
  return checked;
}

std::vector<Point> DotGrid(double x0, double y0, double step, int columns, int rows) {
  std::vector<Point> dots;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < columns; ++c) dots.push_back({x0 + c * step, y0 + r * step});
  }
  return dots;
}

constexpr int kW = 320;
constexpr int kH = 176;
const Pinhole kK = {250, 250, kW / 2.0, kH / 2.0};

// ---------------------------------------------------------------------------------------------

TEST(ModelStageNameTest, NamesEveryStage) {
  EXPECT_STREQ(ModelStageName(ModelStage::kImageEncode), "image_encode");
  EXPECT_STREQ(ModelStageName(ModelStage::kBackbone), "backbone");
  EXPECT_STREQ(ModelStageName(ModelStage::kRefiner), "refiner");
  EXPECT_STREQ(ModelStageName(ModelStage::kDecode), "decode");
}

TEST(WarpModelTest, DescriptorAndWarmUp) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->descriptor().name, "warp");
  EXPECT_EQ(model->descriptor().preset, "");
  EXPECT_EQ(model->descriptor().native_width, 1280);
  EXPECT_EQ(model->descriptor().native_height, 704);
  EXPECT_TRUE(model->WarmUp().ok());
}

TEST(WarpModelTest, IdentityTrajectoryReproducesTheInput) {
  std::unique_ptr<Model> model = CpuModel(2);
  ASSERT_NE(model, nullptr);
  for (const std::string fill : {"border", "black"}) {
    RolloutSpec spec = MakeSpec(NoiseImage(kW, kH), kW, kH, kK, {Rigid{}, Rigid{}, Rigid{}});
    spec.options["fill"] = fill;
    absl::StatusOr<std::vector<uint8_t>> all = RenderAll(*model, spec);
    ASSERT_TRUE(all.ok()) << all.status();
    ASSERT_EQ(all->size(), 3 * spec.image.pixels.size());
    for (int f = 0; f < 3; ++f) {
      int max_diff = 0;
      for (size_t p = 0; p < spec.image.pixels.size(); ++p) {
        max_diff = std::max(max_diff, std::abs(int{(*all)[f * spec.image.pixels.size() + p]} -
                                               int{spec.image.pixels[p]}));
      }
      // The grid hits pixel centres up to float rounding, which the round-to-nearest absorbs.
      EXPECT_EQ(max_diff, 0) << "fill " << fill << " frame " << f;
    }
  }
}

// A pure rotation is the homography K R^T K_0^-1 (source -> target), whatever the depth.
void CheckRotation(const Mat3& rotation, const std::string& depth) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  const std::vector<Point> dots = DotGrid(30.5, 28.25, 40, 7, 4);
  RolloutSpec spec = MakeSpec(DotImage(kW, kH, dots, 1.2), kW, kH, kK,
                              {Rigid{}, Rigid{rotation, {0, 0, 0}}});
  spec.options["depth"] = depth;
  absl::StatusOr<std::vector<uint8_t>> all = RenderAll(*model, spec);
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<Point> predicted;
  for (const Point& dot : dots) predicted.push_back(RotatedProjection(dot, rotation, kK, kK));
  EXPECT_GE(ExpectDotsAt(FrameOf(*all, 1, kW, kH), predicted, 6), 12);
  // Frame 0 is the source itself.
  EXPECT_GE(ExpectDotsAt(FrameOf(*all, 0, kW, kH), dots, 6), 20);
}

TEST(WarpModelTest, YawMatchesHomography) { CheckRotation(RotY(Rad(10)), "2"); }

TEST(WarpModelTest, YawPitchRollMatchesHomographyAtAnyDepth) {
  const Mat3 rotation = Mul(RotY(Rad(-8)), Mul(RotX(Rad(6)), RotZ(Rad(12))));
  CheckRotation(rotation, "2");
  CheckRotation(rotation, "37.5");
}

TEST(WarpModelTest, ForwardTranslationMagnifiesAboutThePrincipalPoint) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  constexpr double kDepth = 4.0, kForward = 1.0;
  std::vector<Point> dots;
  for (const Point& offset : std::vector<Point>{{0, 0}, {45, 0}, {-60, 0}, {0, 40}, {-50, -35},
                                                {70, 30}, {-90, 45}}) {
    dots.push_back({kK.cx + offset.x, kK.cy + offset.y});
  }
  RolloutSpec spec = MakeSpec(DotImage(kW, kH, dots, 1.2), kW, kH, kK,
                              {Rigid{}, Rigid{kIdentity3, {0, 0, kForward}}});
  spec.options["depth"] = "4";
  absl::StatusOr<std::vector<uint8_t>> all = RenderAll(*model, spec);
  ASSERT_TRUE(all.ok()) << all.status();
  const double magnification = kDepth / (kDepth - kForward);
  std::vector<Point> predicted;
  for (const Point& dot : dots) {
    predicted.push_back({kK.cx + (dot.x - kK.cx) * magnification,
                         kK.cy + (dot.y - kK.cy) * magnification});
  }
  EXPECT_EQ(ExpectDotsAt(FrameOf(*all, 1, kW, kH), predicted, 8), 7);
}

TEST(WarpModelTest, SidewaysTranslationShiftsByParallax) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  const std::vector<Point> dots = DotGrid(30.5, 28.25, 40, 7, 4);
  // Right by 0.2 m and up by 0.1 m at a 2.5 m plane: content moves left f*0.2/2.5 = 20 px and
  // down f*0.1/2.5 = 10 px.
  RolloutSpec spec = MakeSpec(DotImage(kW, kH, dots, 1.2), kW, kH, kK,
                              {Rigid{}, Rigid{kIdentity3, {0.2, -0.1, 0}}});
  spec.options["depth"] = "2.5";
  absl::StatusOr<std::vector<uint8_t>> all = RenderAll(*model, spec);
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<Point> predicted;
  for (const Point& dot : dots) predicted.push_back({dot.x - 20, dot.y + 10});
  EXPECT_GE(ExpectDotsAt(FrameOf(*all, 1, kW, kH), predicted, 6), 15);
}

// Per-frame intrinsics: doubling the focal length about the principal point is a 2x zoom, so
// the model must use frame i's K for the target and frame 0's K for the source.
TEST(WarpModelTest, ZoomThroughPerFrameIntrinsics) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  const Pinhole k = {250, 250, 150.5, 90.25};  // off-centre principal point on purpose
  const std::vector<Point> dots = DotGrid(110.5, 60.25, 40, 3, 2);
  RolloutSpec spec = MakeSpec(DotImage(kW, kH, dots, 1.2), kW, kH, k, {Rigid{}, Rigid{}});
  spec.cameras[1].fx *= 2;
  spec.cameras[1].fy *= 2;
  absl::StatusOr<std::vector<uint8_t>> all = RenderAll(*model, spec);
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<Point> predicted;
  for (const Point& dot : dots) {
    predicted.push_back({k.cx + 2 * (dot.x - k.cx), k.cy + 2 * (dot.y - k.cy)});
  }
  EXPECT_EQ(ExpectDotsAt(FrameOf(*all, 1, kW, kH), predicted, 8), 6);
}

// A quarter-pixel shift blends neighbouring columns 3:1; the output must round to nearest.
TEST(WarpModelTest, SubpixelShiftRoundsToNearest) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  RgbImage stripes{kW, kH, std::vector<uint8_t>(kW * kH * 3)};
  for (int y = 0; y < kH; ++y) {
    for (int x = 0; x < kW; ++x) {
      for (int c = 0; c < 3; ++c) stripes.pixels[(y * kW + x) * 3 + c] = x % 2 == 0 ? 10 : 21;
    }
  }
  // Right by f * tx / D = 250 * 0.002 / 2 = 0.25 px: target x samples source x + 0.25.
  const RolloutSpec spec =
      MakeSpec(stripes, kW, kH, kK, {Rigid{}, Rigid{kIdentity3, {0.002, 0, 0}}});
  absl::StatusOr<std::vector<uint8_t>> all = RenderAll(*model, spec);
  ASSERT_TRUE(all.ok()) << all.status();
  const Frame shifted = FrameOf(*all, 1, kW, kH);
  int wrong = 0;
  for (int y = 0; y < kH; ++y) {
    for (int x = 0; x < kW - 1; ++x) {
      // 0.75 * 10 + 0.25 * 21 = 12.75 -> 13; 0.75 * 21 + 0.25 * 10 = 18.25 -> 18.
      wrong += shifted.at(x, y, 0) != (x % 2 == 0 ? 13 : 18);
    }
  }
  EXPECT_EQ(wrong, 0);
}

// 1000x1000 -> 1280x704: scale 1.28 (covering the width), then crop 288 rows off the top.
TEST(WarpModelTest, ResizeCropRemapsIntrinsicsConsistently) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  constexpr int kSrc = 1000, kOutW = 1280, kOutH = 704;
  constexpr double kScale = 1.28, kCropY = 288;
  const Pinhole source_k = {800, 760, 510, 490};
  const std::vector<Point> dots = DotGrid(100.5, 250.5, 100, 9, 5);
  const Mat3 yaw = RotY(Rad(10));
  RolloutSpec spec = MakeSpec(DotImage(kSrc, kSrc, dots, 2.0), kOutW, kOutH, source_k,
                              {Rigid{}, Rigid{yaw, {0, 0, 0}}});
  absl::StatusOr<std::vector<uint8_t>> all = RenderAll(*model, spec);
  ASSERT_TRUE(all.ok()) << all.status();
  const Pinhole out_k = {source_k.fx * kScale, source_k.fy * kScale, source_k.cx * kScale,
                         source_k.cy * kScale - kCropY};
  std::vector<Point> resized, rotated;
  for (const Point& dot : dots) {
    resized.push_back({dot.x * kScale, dot.y * kScale - kCropY});
    rotated.push_back(RotatedProjection(resized.back(), yaw, out_k, out_k));
  }
  EXPECT_GE(ExpectDotsAt(FrameOf(*all, 0, kOutW, kOutH), resized, 8), 40);
  EXPECT_GE(ExpectDotsAt(FrameOf(*all, 1, kOutW, kOutH), rotated, 8), 25);
}

TEST(WarpModelTest, BlackFillForRaysThatLeaveTheImageOrMissThePlane) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  // Yaw 30 deg: the right ~120 columns look past the source's right edge. Yaw 150 deg: every
  // ray points away from the plane.
  RolloutSpec spec = MakeSpec(NoiseImage(kW, kH), kW, kH, kK,
                              {Rigid{RotY(Rad(30)), {0, 0, 0}}, Rigid{RotY(Rad(150)), {0, 0, 0}}});
  // Frame 0 defines the source camera, so put the turned frames after an identity frame.
  spec.cameras.insert(spec.cameras.begin(), Camera(WorldOrigin(), kK));
  for (const std::string fill : {"black", "border"}) {
    spec.options["fill"] = fill;
    absl::StatusOr<std::vector<uint8_t>> all = RenderAll(*model, spec);
    ASSERT_TRUE(all.ok()) << all.status();
    const Frame yawed = FrameOf(*all, 1, kW, kH);
    const Frame behind = FrameOf(*all, 2, kW, kH);
    int yawed_black = 0, behind_black = 0;
    for (int y = 0; y < kH; ++y) {
      for (int x = kW - 100; x < kW; ++x) {
        yawed_black += IsBlack(yawed, x, y);
      }
      for (int x = 0; x < kW; ++x) behind_black += IsBlack(behind, x, y);
    }
    if (fill == "black") {
      EXPECT_EQ(yawed_black, 100 * kH);
      EXPECT_EQ(behind_black, kW * kH);
    } else {
      EXPECT_LT(yawed_black, 10 * kH);
      EXPECT_LT(behind_black, kW * kH / 10);
    }
  }
}

TEST(WarpModelTest, ChunksFramesAndReportsProgress) {
  std::unique_ptr<Model> model = CpuModel(4);
  ASSERT_NE(model, nullptr);
  std::vector<Rigid> poses;
  for (int i = 0; i < 10; ++i) poses.push_back({RotY(Rad(i)), {0.01 * i, 0, 0.02 * i}});
  const RolloutSpec spec = MakeSpec(NoiseImage(kW, kH), kW, kH, kK, poses);
  FakeControl control;
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout = model->StartRollout(spec, control);
  ASSERT_TRUE(rollout.ok()) << rollout.status();
  EXPECT_EQ(control.stage_calls(ModelStage::kImageEncode), 1);
  const std::vector<std::pair<int, int>> expected = {{0, 4}, {4, 4}, {8, 2}};
  for (const auto& [first, count] : expected) {
    absl::StatusOr<std::optional<FrameChunk>> chunk = (*rollout)->NextChunk(control);
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    ASSERT_TRUE(chunk->has_value());
    EXPECT_EQ((*chunk)->first_frame, first);
    EXPECT_EQ((*chunk)->frame_count, count);
    EXPECT_EQ((*chunk)->width, kW);
    EXPECT_EQ((*chunk)->height, kH);
    EXPECT_EQ((*chunk)->rgb.size(), static_cast<size_t>(count) * kW * kH * 3);
  }
  absl::StatusOr<std::optional<FrameChunk>> end = (*rollout)->NextChunk(control);
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_FALSE(end->has_value());
  ASSERT_EQ(control.steps().size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(control.steps()[i], std::make_pair(i + 1, 10));
  EXPECT_GE(control.stage_calls(ModelStage::kBackbone), 3);
  EXPECT_GE(control.stage_calls(ModelStage::kDecode), 3);
}

TEST(WarpModelTest, DeterministicAcrossRuns) {
  std::unique_ptr<Model> model = CpuModel(3);
  ASSERT_NE(model, nullptr);
  std::vector<Rigid> poses;
  for (int i = 0; i < 7; ++i) {
    poses.push_back({Mul(RotY(Rad(2.5 * i)), RotX(Rad(-i))), {0.05 * i, -0.02 * i, 0.1 * i}});
  }
  RolloutSpec spec = MakeSpec(NoiseImage(400, 300), kW, kH, kK, poses);
  spec.seed = 7;
  absl::StatusOr<std::vector<uint8_t>> first = RenderAll(*model, spec);
  spec.seed = 8;  // unused by this model
  absl::StatusOr<std::vector<uint8_t>> second = RenderAll(*model, spec);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(*first == *second);
}

TEST(WarpModelTest, CancellationStopsWithinAFrame) {
  std::unique_ptr<Model> model = CpuModel(4);
  ASSERT_NE(model, nullptr);
  const RolloutSpec spec =
      MakeSpec(NoiseImage(kW, kH), kW, kH, kK, std::vector<Rigid>(10, Rigid{}));
  FakeControl control(/*cancel_after_frames=*/1);
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout = model->StartRollout(spec, control);
  ASSERT_TRUE(rollout.ok()) << rollout.status();
  absl::StatusOr<std::optional<FrameChunk>> chunk = (*rollout)->NextChunk(control);
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(control.steps().size(), 1u);
}

TEST(WarpModelTest, CancelledBeforeStartIsCancelled) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  FakeControl control(/*cancel_after_frames=*/0);
  const RolloutSpec spec = MakeSpec(NoiseImage(kW, kH), kW, kH, kK, {Rigid{}});
  EXPECT_EQ(model->StartRollout(spec, control).status().code(), absl::StatusCode::kCancelled);
}

absl::Status StartWithOptions(const std::map<std::string, std::string>& options) {
  absl::StatusOr<std::unique_ptr<Model>> model = CreateWarpModel({});
  if (!model.ok()) return model.status();
  RolloutSpec spec = MakeSpec(NoiseImage(64, 32), 64, 32, {60, 60, 32, 16}, {Rigid{}});
  spec.options = options;
  FakeControl control;
  return (*model)->StartRollout(spec, control).status();
}

TEST(WarpModelTest, AcceptsKnownOptions) {
  EXPECT_TRUE(StartWithOptions({}).ok());
  EXPECT_TRUE(StartWithOptions({{"depth", "3.5"}, {"fill", "black"}}).ok());
  EXPECT_TRUE(StartWithOptions({{"depth", "1e-3"}, {"fill", "border"}}).ok());
}

TEST(WarpModelTest, RejectsUnknownOptionNamingItAndTheAllowedOnes) {
  const absl::Status status = StartWithOptions({{"depth", "2"}, {"strength", "1"}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("strength"));
  EXPECT_THAT(status.message(), HasSubstr("depth"));
  EXPECT_THAT(status.message(), HasSubstr("fill"));
}

TEST(WarpModelTest, RejectsBadDepthAndFill) {
  for (const std::string depth : {"-1", "0", "abc", "nan", "inf", "", "2m"}) {
    const absl::Status status = StartWithOptions({{"depth", depth}});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << "depth \"" << depth << "\"";
    EXPECT_THAT(status.message(), HasSubstr("depth"));
  }
  const absl::Status status = StartWithOptions({{"fill", "white"}});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("fill"));
}

TEST(WarpModelTest, RejectsUnusableSpec) {
  std::unique_ptr<Model> model = CpuModel();
  ASSERT_NE(model, nullptr);
  FakeControl control;
  RolloutSpec no_frames = MakeSpec(NoiseImage(64, 32), 64, 32, {60, 60, 32, 16}, {});
  EXPECT_EQ(model->StartRollout(no_frames, control).status().code(),
            absl::StatusCode::kInvalidArgument);
  RolloutSpec bad_focal = MakeSpec(NoiseImage(64, 32), 64, 32, {0, 60, 32, 16}, {Rigid{}});
  EXPECT_EQ(model->StartRollout(bad_focal, control).status().code(),
            absl::StatusCode::kInvalidArgument);
  RolloutSpec short_image = MakeSpec(NoiseImage(64, 32), 64, 32, {60, 60, 32, 16}, {Rigid{}});
  short_image.image.pixels.pop_back();
  EXPECT_EQ(model->StartRollout(short_image, control).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WarpModelTest, DeviceParsing) {
  for (const std::string device : {"tpu", "", "CPU", "cuda", "cuda:", "cuda:-1", "cuda:x",
                                   "cuda:0 ", "cuda:1x", "cuda:00000"}) {
    EXPECT_EQ(CreateWarpModel(Config(device)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << "device \"" << device << "\"";
  }
  EXPECT_EQ(CreateWarpModel(Config("cuda:999")).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(CreateWarpModel(Config("cpu", 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WarpModelTest, CudaUnavailableWithoutCuda) {
  absl::StatusOr<std::unique_ptr<Model>> model = CreateWarpModel(Config("cuda:0"));
  if (model.ok()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_EQ(model.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(model.status().message(), HasSubstr("device cuda:0: not available ("));
}

}  // namespace
}  // namespace wmserve::worker
