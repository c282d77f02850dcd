// Tests for the SANA-WM camera preprocessing (worker/models/sana/camera.h): parity of every tensor
// of the golden camera.safetensors (tolerance 1e-5 absolute, golden README §8), frame-count
// rules, intrinsics handling, input validation and geometric invariants.
#include "tests/model/model_test_util.h"
#include "worker/models/sana/camera.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/models/sana/errors.h"
#include "worker/models/sana/safetensors.h"
#include "worker/models/sana/sana_config.h"

namespace wmserve::worker::sana {
namespace {

using test_util::SanaGoldenDir;

using ::testing::HasSubstr;

constexpr double kCameraTolerance = 1e-5;  // absolute, golden README §8
constexpr double kPi = 3.14159265358979323846;

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return INFINITY;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Geometry of the golden "tiny" (vae_stride (8, 320, 320) -> 2x4) and "full" (8, 32, 32) sets.
CameraGeometry Geometry(int spatial_stride) {
  CameraGeometry g;
  g.pixel_height = 704;
  g.pixel_width = 1280;
  g.temporal_stride = 8;
  g.spatial_stride = spatial_stride;
  return g;
}

class SanaCameraGolden : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = SanaGoldenDir() + "/camera.safetensors";
    if (!std::ifstream(path).good()) {
      GTEST_SKIP() << "golden data not found in " << SanaGoldenDir() << " (set WMSERVE_GOLDEN_ROOT)";
    }
    file_.emplace(SafetensorsFile::Open(path));
  }
  at::Tensor Golden(const std::string& name) { return file_->Load(name); }
  // Reports the measured error (visible in the test log and the XML output).
  void Check(const std::string& what, const at::Tensor& ours, const at::Tensor& golden) {
    const double err = MaxAbsDiff(ours, golden);
    std::printf("[ parity ] %-36s max|err| = %.3g (max|ref| = %.3g)\n", what.c_str(), err,
                golden.abs().max().item<double>());
    RecordProperty("max_abs_err." + what, std::to_string(err));
    EXPECT_LE(err, kCameraTolerance) << what;
  }

  std::optional<SafetensorsFile> file_;
};

TEST_F(SanaCameraGolden, PrepareCameraMatchesCameraConditionsAndChunkPlucker) {
  const at::Tensor c2w = Golden("traj.c2w");                 // (2, 49, 4, 4)
  const at::Tensor intr = Golden("traj.intrinsics_px");      // (2, 49, 4)
  for (const auto& [prefix, stride] : {std::pair<std::string, int>{"tiny", 320}, {"full", 32}}) {
    for (int64_t b = 0; b < c2w.size(0); ++b) {
      const std::string tag = "[" + prefix + " " + std::to_string(b) + "]";
      const CameraTensors cam = PrepareCamera(c2w[b], intr[b], Geometry(stride));
      EXPECT_EQ(cam.camera_conditions.scalar_type(), at::kFloat);
      Check("traj.c2w_rel" + tag, cam.c2w_rel, Golden("traj.c2w_rel")[b]);
      // Frame 0 is exactly the identity, as upstream forms it.
      EXPECT_TRUE(at::equal(cam.c2w_rel[0], at::eye(4, at::kFloat)));
      Check(prefix + ".camera_conditions" + tag, cam.camera_conditions,
            Golden(prefix + ".camera_conditions")[b]);
      Check(prefix + ".chunk_plucker" + tag, cam.chunk_plucker, Golden(prefix + ".chunk_plucker")[b]);
    }
  }
  // Latent intrinsics of the tiny grid per the README: [1.5625, 1.42045, 2, 1].
  const at::Tensor row = Golden("tiny.camera_conditions")[0][0];
  EXPECT_NEAR(row[16].item<double>(), 1.5625, 1e-6);
  EXPECT_NEAR(row[17].item<double>(), 500.0 * 2 / 704, 1e-6);
  EXPECT_NEAR(row[18].item<double>(), 2.0, 1e-6);
  EXPECT_NEAR(row[19].item<double>(), 1.0, 1e-6);
}

TEST_F(SanaCameraGolden, PrepareCameraFromStdVectorsMatches) {
  const at::Tensor c2w = Golden("traj.c2w")[1].to(at::kDouble).contiguous();
  const at::Tensor intr = Golden("traj.intrinsics_px")[1].to(at::kDouble).contiguous();
  std::vector<CameraPose> poses(static_cast<size_t>(c2w.size(0)));
  std::vector<Intrinsics> ks(poses.size());
  for (size_t f = 0; f < poses.size(); ++f) {
    for (int i = 0; i < 16; ++i) poses[f][static_cast<size_t>(i)] = c2w.data_ptr<double>()[f * 16 + i];
    const double* k = intr.data_ptr<double>() + f * 4;
    ks[f] = {k[0], k[1], k[2], k[3]};
  }
  const CameraTensors cam = PrepareCamera(poses, ks, Geometry(320));
  Check("tiny.chunk_plucker[1] (std::vector)", cam.chunk_plucker, Golden("tiny.chunk_plucker")[1]);
  Check("tiny.camera_conditions[1] (std::vector)", cam.camera_conditions,
        Golden("tiny.camera_conditions")[1]);
}

TEST_F(SanaCameraGolden, RayMatsAndAbsMapMatch) {
  for (const auto& [prefix, hw] :
       {std::pair<std::string, std::array<int, 2>>{"tiny", {2, 4}}, {"full", {22, 40}}}) {
    const at::Tensor cond = Golden(prefix + ".camera_conditions");  // (2, 7, 20)
    const at::Tensor raymats = ComputeRayMats(cond, hw[0], hw[1]);
    EXPECT_EQ(raymats.scalar_type(), at::kFloat);
    Check(prefix + ".raymats", raymats, Golden(prefix + ".raymats"));
    Check(prefix + ".absmap_unused", ComputeAbsMap(cond, hw[0], hw[1]),
          Golden(prefix + ".absmap_unused"));
  }
  // End to end: raymats from our own camera_conditions.
  const CameraTensors cam =
      PrepareCamera(Golden("traj.c2w")[0], Golden("traj.intrinsics_px")[0], Geometry(32));
  Check("full.raymats[0] (from PrepareCamera)",
        ComputeRayMats(cam.camera_conditions.unsqueeze(0), 22, 40), Golden("full.raymats")[0].unsqueeze(0));
}

TEST_F(SanaCameraGolden, BidirectionalInputsAreTheCameraTensors) {
  const std::string path = SanaGoldenDir() + "/bidirectional.safetensors";
  if (!std::ifstream(path).good()) GTEST_SKIP() << "no bidirectional.safetensors";
  const SafetensorsFile bidi = SafetensorsFile::Open(path);
  EXPECT_TRUE(at::equal(bidi.Load("input.camera_conditions"), Golden("tiny.camera_conditions")));
  EXPECT_TRUE(at::equal(bidi.Load("input.chunk_plucker"), Golden("tiny.chunk_plucker")));
  Check("inter.raymats", ComputeRayMats(bidi.Load("input.camera_conditions"), 2, 4),
        bidi.Load("inter.raymats"));
}

// ---------------------------------------------------------------------------------------------
// Frame-count rules

TEST(SanaCameraFrames, CountRules) {
  const SanaConfig c = SanaConfig::Preset("sana-wm-2.6b");
  EXPECT_EQ(FrameCountMultiple(c, RolloutMode::kBidirectional), 8);
  EXPECT_EQ(FrameCountMultiple(c, RolloutMode::kStreaming), 24);
  for (const int n : {9, 17, 49, 161, 961}) {
    EXPECT_NO_THROW(CheckNumFrames(c, n, RolloutMode::kBidirectional)) << n;
  }
  for (const int n : {25, 49, 73, 241, 961}) {
    EXPECT_NO_THROW(CheckNumFrames(c, n, RolloutMode::kStreaming)) << n;
  }
  try {
    CheckNumFrames(c, 50, RolloutMode::kStreaming);
    FAIL();
  } catch (const InvalidInputError& e) {
    EXPECT_STREQ(e.what(), "num_frames 50: streaming rollouts need 24k+1 frames (25, 49, 73, ...)");
  }
  try {
    CheckNumFrames(c, 50, RolloutMode::kBidirectional);
    FAIL();
  } catch (const InvalidInputError& e) {
    EXPECT_STREQ(e.what(),
                 "num_frames 50: bidirectional rollouts need 8k+1 frames (9, 17, 25, ...)");
  }
  for (const int n : {-1, 0, 1, 8, 10}) {
    EXPECT_THROW(CheckNumFrames(c, n, RolloutMode::kBidirectional), InvalidInputError) << n;
  }
  for (const int n : {1, 9, 17, 33, 48}) {
    EXPECT_THROW(CheckNumFrames(c, n, RolloutMode::kStreaming), InvalidInputError) << n;
  }
}

TEST(SanaCameraFrames, StreamingChunkPlan) {
  const SanaConfig c = SanaConfig::Preset("tiny");
  using Chunks = std::vector<std::pair<int, int>>;
  EXPECT_EQ(StreamingChunks(c, 4), (Chunks{{0, 4}}));
  EXPECT_EQ(StreamingChunks(c, 7), (Chunks{{0, 4}, {4, 7}}));
  EXPECT_EQ(StreamingChunks(c, 121).size(), 40u);
  EXPECT_EQ(StreamingChunks(c, 121).back(), (std::pair<int, int>{118, 121}));
  EXPECT_THROW(StreamingChunks(c, 6), InvalidInputError);
  EXPECT_THROW(StreamingChunks(c, 1), InvalidInputError);
}

// ---------------------------------------------------------------------------------------------
// Intrinsics handling

TEST(SanaCameraIntrinsics, ResizeCropPlanAndRemap) {
  const ResizeCropPlan p = PlanResizeCenterCrop(640, 480, 1280, 704);
  EXPECT_EQ(p.resized_width, 1280);
  EXPECT_EQ(p.resized_height, 960);
  EXPECT_EQ(p.crop_left, 0);
  EXPECT_EQ(p.crop_top, 128);
  const Intrinsics k = TransformIntrinsicsForCrop({100, 120, 320, 240}, p);
  EXPECT_DOUBLE_EQ(k.fx, 200);
  EXPECT_DOUBLE_EQ(k.fy, 240);
  EXPECT_DOUBLE_EQ(k.cx, 640);
  EXPECT_DOUBLE_EQ(k.cy, 352);

  // Wider than 16:9: the height decides, the width is cropped.
  const ResizeCropPlan wide = PlanResizeCenterCrop(1691, 930, 1280, 704);
  EXPECT_EQ(wide.resized_height, 704);
  EXPECT_EQ(wide.resized_width, 1280);  // round(1691 * 704/930) = 1280 (1280.07)
  const ResizeCropPlan pano = PlanResizeCenterCrop(2000, 500, 1280, 704);
  EXPECT_EQ(pano.resized_height, 704);
  EXPECT_EQ(pano.resized_width, 2816);
  EXPECT_EQ(pano.crop_left, 768);
  const Intrinsics kp = TransformIntrinsicsForCrop({800, 800, 1000, 250}, pano);
  EXPECT_DOUBLE_EQ(kp.fx, 800 * 1.408);
  EXPECT_DOUBLE_EQ(kp.cx, 1000 * 1.408 - 768);
  EXPECT_DOUBLE_EQ(kp.cy, 250 * 1.408);
  // Python's round() is half-to-even: 5 * 1.5 = 7.5 -> 8, 3 * 1.5 = 4.5 -> 4.
  EXPECT_EQ(PlanResizeCenterCrop(5, 2, 3, 3).resized_width, 8);
  EXPECT_EQ(PlanResizeCenterCrop(3, 2, 3, 3).resized_width, 4);
  EXPECT_THROW(PlanResizeCenterCrop(0, 10, 10, 10), InvalidInputError);
}

TEST(SanaCameraIntrinsics, FitSequence) {
  const Intrinsics a{100, 100, 50, 40}, b{200, 300, 60, 40};
  EXPECT_EQ(FitIntrinsicsSequence({a}, 5).size(), 5u);
  EXPECT_DOUBLE_EQ(FitIntrinsicsSequence({a}, 5)[4].fx, 100);
  const auto truncated = FitIntrinsicsSequence({a, b, a}, 2);
  ASSERT_EQ(truncated.size(), 2u);
  EXPECT_DOUBLE_EQ(truncated[1].fy, 300);
  const auto interp = FitIntrinsicsSequence({a, b}, 5);
  ASSERT_EQ(interp.size(), 5u);
  EXPECT_DOUBLE_EQ(interp[0].fx, 100);
  EXPECT_DOUBLE_EQ(interp[2].fx, 150);
  EXPECT_DOUBLE_EQ(interp[3].fy, 250);
  EXPECT_DOUBLE_EQ(interp[4].cx, 60);
  EXPECT_THROW(FitIntrinsicsSequence({}, 5), InvalidInputError);
  EXPECT_THROW(FitIntrinsicsSequence({a}, 0), InvalidInputError);
}

// ---------------------------------------------------------------------------------------------
// Preprocessing: validation, padding, invariants

CameraPose Pose(double yaw, double pitch, double tx, double ty, double tz) {
  const double cy = std::cos(yaw), sy = std::sin(yaw), cp = std::cos(pitch), sp = std::sin(pitch);
  // R = R_y(yaw) R_x(pitch)
  return {cy, sy * sp, sy * cp, tx, 0, cp, -sp, ty, -sy, cy * sp, cy * cp, tz, 0, 0, 0, 1};
}

std::vector<CameraPose> Trajectory(int frames) {
  std::vector<CameraPose> out;
  for (int f = 0; f < frames; ++f) {
    out.push_back(Pose(0.5 + 0.02 * f, -0.1 + 0.01 * f, 1.0 + 0.05 * f, -0.5, 2.0 + 0.1 * f));
  }
  return out;
}

TEST(SanaCameraPrepare, ValidatesInputs) {
  const CameraGeometry g = Geometry(32);
  std::vector<CameraPose> poses = Trajectory(9);
  std::vector<Intrinsics> ks(9, Intrinsics{500, 500, 640, 352});
  EXPECT_NO_THROW(PrepareCamera(poses, ks, g));

  poses[3][5] = NAN;
  try {
    PrepareCamera(poses, ks, g);
    FAIL();
  } catch (const InvalidInputError& e) {
    EXPECT_STREQ(e.what(), "cameras[3].c2w value 5 is not finite");
  }
  poses = Trajectory(9);
  poses[2][15] = 2;
  try {
    PrepareCamera(poses, ks, g);
    FAIL();
  } catch (const InvalidInputError& e) {
    EXPECT_STREQ(e.what(), "cameras[2].c2w last row must be 0 0 0 1 (got 0 0 0 2)");
  }
  poses = Trajectory(9);
  ks[4].fy = 0;
  try {
    PrepareCamera(poses, ks, g);
    FAIL();
  } catch (const InvalidInputError& e) {
    EXPECT_STREQ(e.what(), "cameras[4].fy = 0 must be finite and > 0");
  }
  ks = std::vector<Intrinsics>(8, Intrinsics{500, 500, 640, 352});
  EXPECT_THROW(PrepareCamera(poses, ks, g), InvalidInputError);
  EXPECT_THROW(PrepareCamera(std::vector<CameraPose>{}, std::vector<Intrinsics>{}, g),
               InvalidInputError);
}

TEST(SanaCameraPrepare, ShapesPackingAndTailPadding) {
  const CameraGeometry g = Geometry(32);
  const std::vector<Intrinsics> ks(17, Intrinsics{500, 500, 640, 352});
  const CameraTensors cam = PrepareCamera(Trajectory(17), ks, g);
  EXPECT_EQ(cam.camera_conditions.sizes(), (std::vector<int64_t>{3, 20}));
  EXPECT_EQ(cam.chunk_plucker.sizes(), (std::vector<int64_t>{48, 3, 22, 40}));
  EXPECT_EQ(cam.c2w_rel.sizes(), (std::vector<int64_t>{17, 4, 4}));
  const CameraTensors one = PrepareCamera(Trajectory(17), ks, g, at::kDouble);
  const at::Tensor p = one.chunk_plucker;
  // Directions are unit vectors, moments are orthogonal to them.
  for (int j = 0; j < 8; ++j) {
    const at::Tensor d = p.narrow(0, 6 * j, 3);
    const at::Tensor m = p.narrow(0, 6 * j + 3, 3);
    EXPECT_LT(((d * d).sum(0) - 1).abs().max().item<double>(), 1e-12);
    EXPECT_LT((d * m).sum(0).abs().max().item<double>(), 1e-12);
  }
  // Frame 0's relative pose is the identity: at latent frame 0, window slot 0 has zero moment.
  // Latent frame 2's window is raw frames 9..16: slot 7 is frame 16, whose origin is not zero.
  EXPECT_GT(p.narrow(0, 6 * 7 + 3, 3).select(1, 2).abs().max().item<double>(), 0.0);
  EXPECT_EQ(p.narrow(0, 3, 3).select(1, 0).abs().max().item<double>(), 0.0);

  // A single-frame trajectory pads its window with copies of frame 0.
  const CameraTensors single =
      PrepareCamera(std::vector<CameraPose>{Trajectory(1)[0]}, {Intrinsics{500, 500, 640, 352}}, g);
  EXPECT_EQ(single.chunk_plucker.sizes(), (std::vector<int64_t>{48, 1, 22, 40}));
  for (int j = 1; j < 8; ++j) {
    EXPECT_TRUE(at::equal(single.chunk_plucker.narrow(0, 6 * j, 6), single.chunk_plucker.narrow(0, 0, 6)));
  }
  // 3 frames -> 1 latent frame whose window [0, 8) is padded with frame 2.
  const std::vector<Intrinsics> k3(3, Intrinsics{500, 500, 640, 352});
  const CameraTensors three = PrepareCamera(Trajectory(3), k3, g);
  for (int j = 3; j < 8; ++j) {
    EXPECT_TRUE(at::equal(three.chunk_plucker.narrow(0, 6 * j, 6), three.chunk_plucker.narrow(0, 12, 6)));
  }
  EXPECT_FALSE(at::equal(three.chunk_plucker.narrow(0, 6, 6), three.chunk_plucker.narrow(0, 12, 6)));
}

TEST(SanaCameraPrepare, InvariantToTheWorldFrame) {
  // Relativisation removes any world transform G: (G P0)^-1 (G Pi) = P0^-1 Pi.
  const std::vector<CameraPose> base = Trajectory(9);
  const CameraPose g = Pose(1.1, 0.3, -3, 2, 0.5);
  std::vector<CameraPose> moved;
  for (const CameraPose& p : base) {
    CameraPose q{};
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 4; ++j) {
        for (int k = 0; k < 4; ++k) q[i * 4 + j] += g[i * 4 + k] * p[k * 4 + j];
      }
    }
    moved.push_back(q);
  }
  const std::vector<Intrinsics> ks(9, Intrinsics{500, 480, 600, 360});
  const CameraTensors a = PrepareCamera(base, ks, Geometry(32), at::kDouble);
  const CameraTensors b = PrepareCamera(moved, ks, Geometry(32), at::kDouble);
  EXPECT_LT(MaxAbsDiff(a.camera_conditions, b.camera_conditions), 1e-12);
  EXPECT_LT(MaxAbsDiff(a.chunk_plucker, b.chunk_plucker), 1e-12);
}

TEST(SanaCameraRays, RelativeRayTransformsAreWorldInvariant) {
  // UCPE relies on P_i P_j^-1 depending only on relative geometry: with c2w' = G c2w the
  // world->ray matrices become P G^-1, so P'_i P'_j^-1 = P_i P_j^-1.
  std::vector<double> rows;
  std::vector<double> rows_moved;
  const CameraPose g = Pose(-0.7, 0.4, 2, -1, 3);
  for (const CameraPose& p : Trajectory(3)) {
    CameraPose q{};
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 4; ++j) {
        for (int k = 0; k < 4; ++k) q[i * 4 + j] += g[i * 4 + k] * p[k * 4 + j];
      }
    }
    rows.insert(rows.end(), p.begin(), p.end());
    rows.insert(rows.end(), {15.6, 15.6, 20, 11});
    rows_moved.insert(rows_moved.end(), q.begin(), q.end());
    rows_moved.insert(rows_moved.end(), {15.6, 15.6, 20, 11});
  }
  const at::Tensor cond = at::tensor(rows, at::kDouble).view({1, 3, 20});
  const at::Tensor cond_moved = at::tensor(rows_moved, at::kDouble).view({1, 3, 20});
  const at::Tensor P = ComputeRayMats(cond, 22, 40).view({-1, 4, 4});
  const at::Tensor Q = ComputeRayMats(cond_moved, 22, 40).view({-1, 4, 4});
  EXPECT_EQ(P.scalar_type(), at::kDouble);
  // Rigid: R orthonormal, last row 0 0 0 1; InvertRigid is the inverse.
  const at::Tensor eye = at::eye(4, at::kDouble);
  EXPECT_LT((P.matmul(InvertRigid(P)) - eye).abs().max().item<double>(), 1e-12);
  const at::Tensor rel = P.narrow(0, 5, 1).matmul(InvertRigid(P.narrow(0, 2000, 1)));
  const at::Tensor rel_moved = Q.narrow(0, 5, 1).matmul(InvertRigid(Q.narrow(0, 2000, 1)));
  EXPECT_LT((rel - rel_moved).abs().max().item<double>(), 1e-12);
  // And the principal ray of an identity camera is the world z axis through the origin.
  std::vector<double> id_row = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 10, 10, 3, 2};
  const at::Tensor id = ComputeRayMats(at::tensor(id_row, at::kDouble).view({1, 1, 20}), 5, 7);
  EXPECT_LT((id[0][0][2][3] - eye).abs().max().item<double>(), 1e-15);
}

TEST(SanaCameraRays, RejectsBadShapes) {
  EXPECT_THROW(ComputeRayMats(at::zeros({2, 7, 19}), 2, 4), InvalidInputError);
  EXPECT_THROW(ComputeRayMats(at::zeros({7, 20}), 2, 4), InvalidInputError);
  EXPECT_THROW(ComputeAbsMap(at::zeros({1, 1, 20}), 0, 4), InvalidInputError);
}

}  // namespace
}  // namespace wmserve::worker::sana
