#include "server/request_validation.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wmserve::server {
namespace {

using ::testing::HasSubstr;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

void SetIdentity(v1::Pose* pose) {
  pose->clear_c2w();
  for (int i = 0; i < 16; ++i) pose->add_c2w(i % 5 == 0 ? 1.0 : 0.0);
}

// A request every rule accepts: 16 frames, identity poses, one shared intrinsics set.
v1::RolloutRequest ValidRequest() {
  v1::RolloutRequest request;
  request.set_model("warp");
  request.set_image("0123456789");  // Validation does not decode it.
  request.set_fps(16);
  request.set_num_frames(16);
  request.set_seed(7);
  for (int i = 0; i < 16; ++i) SetIdentity(request.mutable_trajectory()->add_poses());
  v1::Intrinsics* k = request.mutable_trajectory()->add_intrinsics();
  k->set_fx(500);
  k->set_fy(500);
  k->set_cx(640);
  k->set_cy(352);
  return request;
}

v1::Pose* MutablePose(v1::RolloutRequest& r, int i) {
  return r.mutable_trajectory()->mutable_poses(i);
}

// Rotation by `degrees` about +y as a row-major 4x4 c2w.
void SetYaw(v1::Pose* pose, double degrees) {
  const double a = degrees * 3.14159265358979323846 / 180;
  SetIdentity(pose);
  pose->set_c2w(0, std::cos(a));
  pose->set_c2w(2, std::sin(a));
  pose->set_c2w(8, -std::sin(a));
  pose->set_c2w(10, std::cos(a));
}

TEST(RequestValidationTest, ValidRequestPasses) {
  EXPECT_TRUE(ValidateRolloutRequest(ValidRequest()).ok());
}

TEST(RequestValidationTest, AcceptsRotatedPosesPerFrameIntrinsicsAndOptions) {
  v1::RolloutRequest r = ValidRequest();
  for (int i = 0; i < 16; ++i) SetYaw(MutablePose(r, i), 10.0 * i);
  MutablePose(r, 5)->set_c2w(3, -2.5);  // Translation is unrestricted.
  for (int i = 1; i < 16; ++i)
    *r.mutable_trajectory()->add_intrinsics() = r.trajectory().intrinsics(0);
  r.mutable_output()->set_width(640);
  r.mutable_output()->set_height(352);
  r.mutable_output()->set_crf(51);
  r.mutable_output()->set_quality(v1::QUALITY_HIGH);
  r.set_client_request_id(std::string(128, 'x'));
  r.set_fps(240);
  EXPECT_TRUE(ValidateRolloutRequest(r).ok()) << ValidateRolloutRequest(r);
}

TEST(RequestValidationTest, AcceptsSmallNumericNoiseWithinTolerance) {
  v1::RolloutRequest r = ValidRequest();
  MutablePose(r, 0)->set_c2w(0, 1 + 1e-4);
  EXPECT_TRUE(ValidateRolloutRequest(r).ok());
}

struct FailureCase {
  std::string name;
  std::function<void(v1::RolloutRequest&)> mutate;
  std::string expected;  // Substring of the error message.
};

std::vector<FailureCase> FailureCases() {
  return {
      {"empty model", [](auto& r) { r.clear_model(); }, "model: must not be empty"},
      {"empty image", [](auto& r) { r.clear_image(); }, "image: must not be empty"},
      {"oversized image", [](auto& r) { r.set_image(std::string(40000000, 'x')); },
       "image: 40000000 bytes exceeds the 33554432-byte limit"},
      {"zero frames", [](auto& r) { r.set_num_frames(0); }, "num_frames: must be >= 1"},
      {"too many frames", [](auto& r) { r.set_num_frames(5000); },
       "num_frames: 5000 exceeds the limit of 4096"},
      {"NaN in pose", [](auto& r) { MutablePose(r, 3)->set_c2w(7, kNaN); },
       "trajectory.poses[3].c2w: value 7 is NaN"},
      {"Inf in pose", [](auto& r) { MutablePose(r, 2)->set_c2w(11, -kInf); },
       "trajectory.poses[2].c2w: value 11 is infinite"},
      {"non-orthonormal rotation", [](auto& r) { MutablePose(r, 3)->set_c2w(0, 1.2); },
       "trajectory.poses[3].c2w: rotation is not orthonormal (max |R^T R - I| = 0.44 > 0.001)"},
      {"shear", [](auto& r) { MutablePose(r, 1)->set_c2w(1, 0.1); },
       "trajectory.poses[1].c2w: rotation is not orthonormal"},
      {"reflection", [](auto& r) { MutablePose(r, 0)->set_c2w(0, -1); },
       "trajectory.poses[0].c2w: rotation has determinant -1 (reflection)"},
      {"bad last row", [](auto& r) { MutablePose(r, 2)->set_c2w(14, 0.5); },
       "trajectory.poses[2].c2w: last row must be 0 0 0 1 (got 0 0 0.5 1)"},
      {"last row scale", [](auto& r) { MutablePose(r, 2)->set_c2w(15, 2); },
       "trajectory.poses[2].c2w: last row must be 0 0 0 1"},
      {"c2w too short", [](auto& r) { MutablePose(r, 4)->mutable_c2w()->RemoveLast(); },
       "trajectory.poses[4].c2w: has 15 values (need 16"},
      {"c2w empty", [](auto& r) { MutablePose(r, 0)->clear_c2w(); },
       "trajectory.poses[0].c2w: has 0 values (need 16"},
      {"fewer poses than frames",
       [](auto& r) { r.mutable_trajectory()->mutable_poses()->DeleteSubrange(12, 4); },
       "trajectory.poses: 12 poses for num_frames=16 (need one per frame)"},
      {"more frames than poses", [](auto& r) { r.set_num_frames(17); },
       "trajectory.poses: 16 poses for num_frames=17 (need one per frame)"},
      {"negative focal length",
       [](auto& r) { r.mutable_trajectory()->mutable_intrinsics(0)->set_fx(-500); },
       "trajectory.intrinsics[0].fx: must be > 0 (got -500)"},
      {"zero focal length",
       [](auto& r) { r.mutable_trajectory()->mutable_intrinsics(0)->set_fy(0); },
       "trajectory.intrinsics[0].fy: must be > 0 (got 0)"},
      {"NaN intrinsics",
       [](auto& r) { r.mutable_trajectory()->mutable_intrinsics(0)->set_cx(kNaN); },
       "trajectory.intrinsics[0].cx: must be finite (got nan)"},
      {"Inf focal length",
       [](auto& r) { r.mutable_trajectory()->mutable_intrinsics(0)->set_fx(kInf); },
       "trajectory.intrinsics[0].fx: must be finite (got inf)"},
      {"bad per-frame intrinsics index",
       [](auto& r) {
         for (int i = 1; i < 16; ++i) {
           *r.mutable_trajectory()->add_intrinsics() = r.trajectory().intrinsics(0);
         }
         r.mutable_trajectory()->mutable_intrinsics(9)->set_cy(-kInf);
       },
       "trajectory.intrinsics[9].cy: must be finite"},
      {"three intrinsics sets",
       [](auto& r) {
         for (int i = 0; i < 2; ++i) {
           *r.mutable_trajectory()->add_intrinsics() = r.trajectory().intrinsics(0);
         }
       },
       "trajectory.intrinsics: 3 sets for num_frames=16 (need 1 or 16)"},
      {"no intrinsics", [](auto& r) { r.mutable_trajectory()->clear_intrinsics(); },
       "trajectory.intrinsics: 0 sets for num_frames=16 (need 1 or 16)"},
      {"zero fps", [](auto& r) { r.set_fps(0); }, "fps: must be > 0 (got 0)"},
      {"negative fps", [](auto& r) { r.set_fps(-5); }, "fps: must be > 0 (got -5)"},
      {"NaN fps", [](auto& r) { r.set_fps(kNaN); }, "fps: must be finite (got nan)"},
      {"fps over limit", [](auto& r) { r.set_fps(241); }, "fps: must be <= 240 (got 241)"},
      {"odd width",
       [](auto& r) {
         r.mutable_output()->set_width(641);
         r.mutable_output()->set_height(480);
       },
       "output.width/height: must be even (got 641x480)"},
      {"only width", [](auto& r) { r.mutable_output()->set_width(640); },
       "output.width/height: set both or neither (got 640x0)"},
      {"only height", [](auto& r) { r.mutable_output()->set_height(480); },
       "output.width/height: set both or neither (got 0x480)"},
      {"size over limit",
       [](auto& r) {
         r.mutable_output()->set_width(4096);
         r.mutable_output()->set_height(2160);
       },
       "output.width/height: 4096x2160 exceeds the 3840x2160 limit"},
      {"crf 60", [](auto& r) { r.mutable_output()->set_crf(60); },
       "output.crf: must be <= 51 (got 60)"},
      {"unknown quality",
       [](auto& r) { r.mutable_output()->set_quality(static_cast<v1::Quality>(99)); },
       "output.quality: unknown value 99"},
      {"unknown codec", [](auto& r) { r.mutable_output()->set_codec(static_cast<v1::Codec>(7)); },
       "output.codec: unknown value 7"},
      {"unknown container",
       [](auto& r) { r.mutable_output()->set_container(static_cast<v1::Container>(-1)); },
       "output.container: unknown value -1"},
      {"long client_request_id", [](auto& r) { r.set_client_request_id(std::string(129, 'x')); },
       "client_request_id: 129 bytes exceeds the 128-byte limit"},
  };
}

TEST(RequestValidationTest, EachRuleFailsWithPreciseMessage) {
  for (const FailureCase& c : FailureCases()) {
    SCOPED_TRACE(c.name);
    v1::RolloutRequest request = ValidRequest();
    c.mutate(request);
    const absl::Status status = ValidateRolloutRequest(request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.expected));
  }
}

TEST(RequestValidationTest, HonoursCustomLimits) {
  RequestLimits limits;
  limits.max_frames = 8;
  limits.max_image_bytes = 4;
  limits.max_fps = 30;
  const absl::Status status = ValidateRolloutRequest(ValidRequest(), limits);
  EXPECT_THAT(std::string(status.message()), HasSubstr("image: 10 bytes exceeds the 4-byte limit"));

  limits.max_image_bytes = 1 << 20;
  EXPECT_THAT(std::string(ValidateRolloutRequest(ValidRequest(), limits).message()),
              HasSubstr("num_frames: 16 exceeds the limit of 8"));

  limits.max_frames = 16;
  v1::RolloutRequest r = ValidRequest();
  r.set_fps(60);
  EXPECT_THAT(std::string(ValidateRolloutRequest(r, limits).message()),
              HasSubstr("fps: must be <= 30 (got 60)"));
}

TEST(RequestValidationTest, RotationToleranceIsConfigurable) {
  v1::RolloutRequest r = ValidRequest();
  MutablePose(r, 0)->set_c2w(0, 1.01);
  EXPECT_FALSE(ValidateRolloutRequest(r).ok());
  RequestLimits loose;
  loose.rotation_tolerance = 0.05;
  EXPECT_TRUE(ValidateRolloutRequest(r, loose).ok());
}

TEST(RequestValidationTest, SingleFrameNeedsExactlyOneIntrinsicsSet) {
  v1::RolloutRequest r = ValidRequest();
  r.set_num_frames(1);
  r.mutable_trajectory()->mutable_poses()->DeleteSubrange(1, 15);
  EXPECT_TRUE(ValidateRolloutRequest(r).ok());
  *r.mutable_trajectory()->add_intrinsics() = r.trajectory().intrinsics(0);
  EXPECT_THAT(std::string(ValidateRolloutRequest(r).message()),
              HasSubstr("trajectory.intrinsics: 2 sets for num_frames=1 (need 1)"));
}

}  // namespace
}  // namespace wmserve::server
