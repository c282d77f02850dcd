// Client library: trajectory presets, the trajectory JSON file, request building and the
// stream-order checks of RunRollout (against an in-process fake RolloutService).
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client/file_io.h"
#include "client/rollout_client.h"
#include "client/trajectory_file.h"
#include "client/trajectory_presets.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/request_validation.h"

namespace wmserve::client {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;

constexpr double kPi = 3.14159265358979323846;
constexpr double kEps = 1e-9;

// ----- Small geometry helpers ----------------------------------------------------------------

struct Vec3 {
  double x, y, z;
};

double C2w(const v1::Pose& pose, int row, int col) { return pose.c2w(row * 4 + col); }

Vec3 Translation(const v1::Pose& pose) {
  return {C2w(pose, 0, 3), C2w(pose, 1, 3), C2w(pose, 2, 3)};
}

// World point -> camera coordinates: R^T (p - t).
Vec3 WorldToCamera(const v1::Pose& pose, Vec3 p) {
  const Vec3 t = Translation(pose);
  const double d[3] = {p.x - t.x, p.y - t.y, p.z - t.z};
  double c[3] = {0, 0, 0};
  for (int i = 0; i < 3; ++i) {
    for (int k = 0; k < 3; ++k) c[i] += C2w(pose, k, i) * d[k];
  }
  return {c[0], c[1], c[2]};
}

// Pixel (u, v) of a camera-space point.
std::array<double, 2> Project(const v1::Intrinsics& k, Vec3 c) {
  return {k.fx() * c.x / c.z + k.cx(), k.fy() * c.y / c.z + k.cy()};
}

void ExpectRotationIdentity(const v1::Pose& pose) {
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) EXPECT_NEAR(C2w(pose, r, c), r == c ? 1 : 0, kEps);
  }
}

v1::TrajectoryFile MakeOrDie(TrajectoryPreset preset, PresetOptions options) {
  absl::StatusOr<v1::TrajectoryFile> file = MakePresetTrajectory(preset, options);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? *file : v1::TrajectoryFile();
}

PresetOptions Frames(int n) {
  PresetOptions options;
  options.frames = n;
  return options;
}

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/wmserve_", ::getpid(), "_", name);
}

// ----- Presets -------------------------------------------------------------------------------

constexpr TrajectoryPreset kAllPresets[] = {TrajectoryPreset::kYaw, TrajectoryPreset::kPan,
                                            TrajectoryPreset::kForward, TrajectoryPreset::kOrbit};

TEST(TrajectoryPresetTest, EveryPresetIsWellFormedAndPassesValidation) {
  for (TrajectoryPreset preset : kAllPresets) {
    SCOPED_TRACE(TrajectoryPresetName(preset));
    const v1::TrajectoryFile file = MakeOrDie(preset, Frames(17));
    EXPECT_EQ(file.fps(), 16);
    EXPECT_EQ(file.image_width(), 1280u);
    EXPECT_EQ(file.image_height(), 704u);
    ASSERT_EQ(file.trajectory().poses_size(), 17);
    ASSERT_EQ(file.trajectory().intrinsics_size(), 1);

    // Frame 0 is exactly the identity.
    for (int i = 0; i < 16; ++i) {
      EXPECT_EQ(file.trajectory().poses(0).c2w(i), i % 5 == 0 ? 1.0 : 0.0) << "value " << i;
    }
    // Orthonormal rotations, det +1, last row 0 0 0 1: as checked by the server.
    v1::RolloutRequest request;
    request.set_model("warp");
    request.set_image("png");
    request.set_fps(file.fps());
    request.set_num_frames(file.trajectory().poses_size());
    *request.mutable_trajectory() = file.trajectory();
    server::RequestLimits strict;
    strict.rotation_tolerance = 1e-12;
    const absl::Status status = server::ValidateRolloutRequest(request, strict);
    EXPECT_TRUE(status.ok()) << status;
  }
}

TEST(TrajectoryPresetTest, IntrinsicsFollowFieldOfView) {
  PresetOptions options = Frames(2);
  options.image_width = 640;
  options.image_height = 360;
  options.hfov_degrees = 90;
  options.fps = 24;
  const v1::TrajectoryFile file = MakeOrDie(TrajectoryPreset::kPan, options);
  const v1::Intrinsics& k = file.trajectory().intrinsics(0);
  EXPECT_NEAR(k.fx(), 320, kEps);  // (640 / 2) / tan(45 deg)
  EXPECT_NEAR(k.fy(), 320, kEps);
  EXPECT_EQ(k.cx(), 320);
  EXPECT_EQ(k.cy(), 180);
  EXPECT_EQ(file.fps(), 24);
  EXPECT_EQ(file.image_width(), 640u);
  EXPECT_EQ(file.image_height(), 360u);

  const v1::TrajectoryFile wide = MakeOrDie(TrajectoryPreset::kPan, Frames(2));
  EXPECT_NEAR(wide.trajectory().intrinsics(0).fx(), 640 / std::tan(30 * kPi / 180), 1e-6);
}

TEST(TrajectoryPresetTest, PositiveYawTurnsRightSoContentMovesLeft) {
  const v1::TrajectoryFile file = MakeOrDie(TrajectoryPreset::kYaw, Frames(9));
  const v1::Intrinsics& k = file.trajectory().intrinsics(0);
  const v1::Pose& last = file.trajectory().poses(8);
  // Forward axis of the last frame (third column of R) swung 30 degrees toward +x.
  EXPECT_NEAR(C2w(last, 0, 2), std::sin(30 * kPi / 180), kEps);
  EXPECT_NEAR(C2w(last, 2, 2), std::cos(30 * kPi / 180), kEps);

  const Vec3 ahead{0, 0, 10};  // Straight ahead of frame 0.
  const auto first_px = Project(k, WorldToCamera(file.trajectory().poses(0), ahead));
  const auto last_px = Project(k, WorldToCamera(last, ahead));
  EXPECT_NEAR(first_px[0], k.cx(), kEps);
  EXPECT_LT(last_px[0], k.cx() - 100);  // Left of centre.
  EXPECT_NEAR(last_px[1], k.cy(), kEps);
  for (int i = 0; i < 9; ++i) {
    EXPECT_NEAR(Translation(file.trajectory().poses(i)).x, 0, kEps);
    EXPECT_NEAR(Translation(file.trajectory().poses(i)).z, 0, kEps);
  }

  // Linear in angle: the middle frame is at half the total.
  PresetOptions options = Frames(3);
  options.degrees = -40;
  const v1::TrajectoryFile left = MakeOrDie(TrajectoryPreset::kYaw, options);
  EXPECT_NEAR(C2w(left.trajectory().poses(1), 0, 2), std::sin(-20 * kPi / 180), kEps);
}

TEST(TrajectoryPresetTest, PanMovesRightLinearly) {
  PresetOptions options = Frames(5);
  options.meters = 2;
  const v1::TrajectoryFile file = MakeOrDie(TrajectoryPreset::kPan, options);
  for (int i = 0; i < 5; ++i) {
    SCOPED_TRACE(i);
    const v1::Pose& pose = file.trajectory().poses(i);
    ExpectRotationIdentity(pose);
    EXPECT_NEAR(Translation(pose).x, 0.5 * i, kEps);
    EXPECT_EQ(Translation(pose).y, 0);
    EXPECT_EQ(Translation(pose).z, 0);
  }
  const v1::TrajectoryFile by_default = MakeOrDie(TrajectoryPreset::kPan, Frames(3));
  EXPECT_NEAR(Translation(by_default.trajectory().poses(2)).x, 1, kEps);
}

TEST(TrajectoryPresetTest, ForwardMovesAlongPlusZ) {
  const v1::TrajectoryFile file = MakeOrDie(TrajectoryPreset::kForward, Frames(5));
  for (int i = 0; i < 5; ++i) {
    SCOPED_TRACE(i);
    const v1::Pose& pose = file.trajectory().poses(i);
    ExpectRotationIdentity(pose);
    EXPECT_EQ(Translation(pose).x, 0);
    EXPECT_EQ(Translation(pose).y, 0);
    EXPECT_NEAR(Translation(pose).z, 0.5 * i, kEps);  // Default total: 2 m.
  }
}

TEST(TrajectoryPresetTest, OrbitKeepsTargetAtImageCentre) {
  PresetOptions options = Frames(13);
  options.meters = 2.5;
  options.degrees = 120;
  const v1::TrajectoryFile file = MakeOrDie(TrajectoryPreset::kOrbit, options);
  const v1::Intrinsics& k = file.trajectory().intrinsics(0);
  const Vec3 target{0, 0, 2.5};
  for (int i = 0; i < 13; ++i) {
    SCOPED_TRACE(i);
    const v1::Pose& pose = file.trajectory().poses(i);
    const Vec3 c = WorldToCamera(pose, target);
    EXPECT_NEAR(c.z, 2.5, 1e-9);  // On the circle, in front.
    const auto px = Project(k, c);
    EXPECT_NEAR(px[0], k.cx(), 1e-6);
    EXPECT_NEAR(px[1], k.cy(), 1e-6);
    EXPECT_NEAR(Translation(pose).y, 0, kEps);  // Horizontal circle.
  }
  // Heading turns like a positive yaw; the camera moves to its left.
  const v1::Pose& last = file.trajectory().poses(12);
  EXPECT_NEAR(C2w(last, 0, 2), std::sin(120 * kPi / 180), kEps);
  EXPECT_LT(Translation(file.trajectory().poses(1)).x, 0);
}

TEST(TrajectoryPresetTest, SingleFrameIsIdentity) {
  for (TrajectoryPreset preset : kAllPresets) {
    SCOPED_TRACE(TrajectoryPresetName(preset));
    const v1::TrajectoryFile file = MakeOrDie(preset, Frames(1));
    ASSERT_EQ(file.trajectory().poses_size(), 1);
    ExpectRotationIdentity(file.trajectory().poses(0));
    EXPECT_EQ(Translation(file.trajectory().poses(0)).z, 0);
  }
}

TEST(TrajectoryPresetTest, RejectsBadOptions) {
  struct Case {
    TrajectoryPreset preset;
    PresetOptions options;
    std::string expected;
  };
  PresetOptions zero_frames = Frames(0);
  PresetOptions bad_fps = Frames(2);
  bad_fps.fps = 0;
  PresetOptions bad_hfov = Frames(2);
  bad_hfov.hfov_degrees = 180;
  PresetOptions bad_size = Frames(2);
  bad_size.image_height = 0;
  PresetOptions meters = Frames(2);
  meters.meters = 1;
  PresetOptions degrees = Frames(2);
  degrees.degrees = 10;
  PresetOptions radius = Frames(2);
  radius.meters = 0;
  PresetOptions nan_degrees = Frames(2);
  nan_degrees.degrees = std::nan("");
  const Case cases[] = {
      {TrajectoryPreset::kYaw, zero_frames, "frames: must be >= 1 (got 0)"},
      {TrajectoryPreset::kYaw, bad_fps, "fps: must be a finite number > 0 (got 0)"},
      {TrajectoryPreset::kPan, bad_hfov, "hfov: must be in (0, 180) degrees (got 180)"},
      {TrajectoryPreset::kPan, bad_size, "width/height: must be > 0 (got 1280x0)"},
      {TrajectoryPreset::kYaw, meters, "meters: not used by the yaw preset"},
      {TrajectoryPreset::kForward, degrees, "degrees: not used by the forward preset"},
      {TrajectoryPreset::kOrbit, radius, "meters: must be a finite number > 0 (got 0)"},
      {TrajectoryPreset::kOrbit, nan_degrees, "degrees: must be finite"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    absl::StatusOr<v1::TrajectoryFile> file = MakePresetTrajectory(c.preset, c.options);
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(c.expected));
  }
}

TEST(TrajectoryPresetTest, ParsesPresetNames) {
  for (TrajectoryPreset preset : kAllPresets) {
    absl::StatusOr<TrajectoryPreset> parsed = ParseTrajectoryPreset(TrajectoryPresetName(preset));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, preset);
  }
  absl::StatusOr<TrajectoryPreset> bad = ParseTrajectoryPreset("spin");
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("unknown trajectory preset \"spin\""));
}

// ----- Trajectory JSON file ------------------------------------------------------------------

TEST(TrajectoryFileTest, WriteReadRoundTripIsExact) {
  PresetOptions options = Frames(7);
  options.degrees = 33.3;
  v1::TrajectoryFile file = MakeOrDie(TrajectoryPreset::kOrbit, options);
  file.set_fps(29.97);
  file.mutable_trajectory()->mutable_intrinsics(0)->set_cx(0.1 + 0.2);  // Not a short decimal.
  const std::string path = TempPath("roundtrip.json");
  ASSERT_TRUE(WriteTrajectoryFile(path, file).ok());

  absl::StatusOr<v1::TrajectoryFile> read = ReadTrajectoryFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  std::string diff;
  MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(file, *read)) << diff;

  // Pretty-printed, with the lowerCamelCase JSON names.
  absl::StatusOr<std::string> text = ReadFileBytes(path);
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, HasSubstr("\n \"imageWidth\": 1280,\n"));
  EXPECT_EQ(text->back(), '\n');
  std::remove(path.c_str());
}

TEST(TrajectoryFileTest, AcceptsProtoFieldNames) {
  absl::StatusOr<v1::TrajectoryFile> file = ParseTrajectoryJson(R"({
    "fps": 12, "image_width": 640, "imageHeight": 480,
    "trajectory": {"poses": [{"c2w": [1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1]}],
                   "intrinsics": [{"fx": 500, "fy": 500, "cx": 320, "cy": 240}]}})");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->image_width(), 640u);
  EXPECT_EQ(file->image_height(), 480u);
  EXPECT_EQ(file->trajectory().poses(0).c2w_size(), 16);
}

TEST(TrajectoryFileTest, MalformedJsonNamesFileAndProblem) {
  const std::string path = TempPath("malformed.json");
  ASSERT_TRUE(WriteFileBytes(path, "{\"fps\": 16,, }").ok());
  absl::StatusOr<v1::TrajectoryFile> file = ReadTrajectoryFile(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  // One line, with the position of the second comma.
  EXPECT_EQ(file.status().message(),
            path + ": invalid trajectory JSON: 1:12: Expected an object key or }.");
  std::remove(path.c_str());

  file = ParseTrajectoryJson("\n\n  {\"fps\": 16,\n \"imageWidth\": 1 2}", "t.json");
  EXPECT_EQ(file.status().message(),
            "t.json: invalid trajectory JSON: 4:18: Expected , or } after key:value pair.");
}

TEST(TrajectoryFileTest, UnknownFieldIsRejected) {
  absl::StatusOr<v1::TrajectoryFile> file =
      ParseTrajectoryJson(R"({"fps": 16, "trajectory": {"intrinsic": []}})", "t.json");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(file.status().message(),
            "t.json: invalid trajectory JSON: unknown field \"intrinsic\" in trajectory");
  file = ParseTrajectoryJson(R"({"fpss": 16})", "t.json");
  EXPECT_EQ(file.status().message(), "t.json: invalid trajectory JSON: unknown field \"fpss\"");
}

TEST(TrajectoryFileTest, WrongTypeIsRejected) {
  absl::StatusOr<v1::TrajectoryFile> file = ParseTrajectoryJson(R"({"imageWidth": "wide"})");
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("invalid trajectory JSON"));
}

TEST(TrajectoryFileTest, MissingFileIsNotFound) {
  const std::string path = TempPath("does_not_exist.json");
  absl::StatusOr<v1::TrajectoryFile> file = ReadTrajectoryFile(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(file.status().message(), path + ": cannot open: No such file or directory");
}

TEST(TrajectoryFileTest, WriteToMissingDirectoryFails) {
  v1::TrajectoryFile file;
  const absl::Status status = WriteTrajectoryFile("/nonexistent-dir/t.json", file);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("/nonexistent-dir/t.json: cannot create"));
}

v1::TrajectoryFile FileWithIntrinsics(uint32_t w, uint32_t h) {
  v1::TrajectoryFile file;
  file.set_image_width(w);
  file.set_image_height(h);
  for (int i = 0; i < 2; ++i) {
    v1::Intrinsics* k = file.mutable_trajectory()->add_intrinsics();
    k->set_fx(1000 + i);
    k->set_fy(900 + i);
    k->set_cx(640);
    k->set_cy(352);
  }
  return file;
}

TEST(ScaleIntrinsicsTest, ScalesEachAxisByItsRatio) {
  v1::TrajectoryFile file = FileWithIntrinsics(1280, 704);
  ScaleIntrinsicsToImage(file, 640, 176);  // x by 1/2, y by 1/4.
  const v1::Intrinsics& k0 = file.trajectory().intrinsics(0);
  EXPECT_DOUBLE_EQ(k0.fx(), 500);
  EXPECT_DOUBLE_EQ(k0.cx(), 320);
  EXPECT_DOUBLE_EQ(k0.fy(), 225);
  EXPECT_DOUBLE_EQ(k0.cy(), 88);
  EXPECT_DOUBLE_EQ(file.trajectory().intrinsics(1).fx(), 500.5);
  EXPECT_DOUBLE_EQ(file.trajectory().intrinsics(1).fy(), 225.25);
  EXPECT_EQ(file.image_width(), 640u);
  EXPECT_EQ(file.image_height(), 176u);

  // Already at that size: unchanged.
  const v1::TrajectoryFile before = file;
  ScaleIntrinsicsToImage(file, 640, 176);
  EXPECT_TRUE(MessageDifferencer::Equals(before, file));
}

TEST(ScaleIntrinsicsTest, UpscalesToLargerImage) {
  v1::TrajectoryFile file = FileWithIntrinsics(1280, 704);
  ScaleIntrinsicsToImage(file, 1920, 1056);
  EXPECT_DOUBLE_EQ(file.trajectory().intrinsics(0).fx(), 1500);
  EXPECT_DOUBLE_EQ(file.trajectory().intrinsics(0).cy(), 528);
}

TEST(ScaleIntrinsicsTest, UnknownOrSameSizeLeavesIntrinsicsAlone) {
  for (auto [w, h] : {std::pair<uint32_t, uint32_t>{0, 0}, {1280, 0}, {0, 704}, {640, 352}}) {
    SCOPED_TRACE(absl::StrCat(w, "x", h));
    v1::TrajectoryFile file = FileWithIntrinsics(w, h);
    const v1::TrajectoryFile before = file;
    ScaleIntrinsicsToImage(file, 640, 352);
    EXPECT_TRUE(MessageDifferencer::Equals(before, file));
  }
  v1::TrajectoryFile file = FileWithIntrinsics(1280, 704);
  const v1::TrajectoryFile before = file;
  ScaleIntrinsicsToImage(file, 0, 0);
  EXPECT_TRUE(MessageDifferencer::Equals(before, file));
}

// ----- Request building ----------------------------------------------------------------------

std::string Be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

// Signature + IHDR, enough for ProbeImageSize (no pixel data).
std::string PngHeader(uint32_t w, uint32_t h) {
  return std::string("\x89PNG\r\n\x1a\n", 8) + Be32(13) + "IHDR" + Be32(w) + Be32(h) +
         std::string("\x08\x02\x00\x00\x00", 5);
}

// SOI, an APP0 segment, then a SOFn segment of the given marker.
std::string JpegHeader(uint16_t w, uint16_t h, uint8_t sof = 0xC0) {
  std::string b = "\xFF\xD8";
  b += std::string("\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00", 18);
  b += "\xFF";
  b += static_cast<char>(sof);
  b += std::string("\x00\x11\x08", 3);
  b += static_cast<char>(h >> 8);
  b += static_cast<char>(h & 0xFF);
  b += static_cast<char>(w >> 8);
  b += static_cast<char>(w & 0xFF);
  b += std::string(10, '\x01');
  return b;
}

TEST(ProbeImageSizeTest, ReadsPngAndJpegHeaders) {
  absl::StatusOr<ImageSize> png = ProbeImageSize(PngHeader(1280, 704));
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_EQ(png->width, 1280);
  EXPECT_EQ(png->height, 704);

  absl::StatusOr<ImageSize> jpeg = ProbeImageSize(JpegHeader(640, 480));
  ASSERT_TRUE(jpeg.ok()) << jpeg.status();
  EXPECT_EQ(jpeg->width, 640);
  EXPECT_EQ(jpeg->height, 480);

  absl::StatusOr<ImageSize> progressive = ProbeImageSize(JpegHeader(33, 17, 0xC2));
  ASSERT_TRUE(progressive.ok()) << progressive.status();
  EXPECT_EQ(progressive->width, 33);
  EXPECT_EQ(progressive->height, 17);
}

TEST(ProbeImageSizeTest, RejectsOtherAndTruncatedData) {
  EXPECT_THAT(std::string(ProbeImageSize("GIF89a....").status().message()),
              HasSubstr("not a PNG or JPEG image (first bytes 47 49 46 38)"));
  EXPECT_THAT(std::string(ProbeImageSize("").status().message()), HasSubstr("empty"));
  EXPECT_THAT(std::string(ProbeImageSize(PngHeader(8, 8).substr(0, 20)).status().message()),
              HasSubstr("truncated PNG header"));
  EXPECT_THAT(std::string(ProbeImageSize(JpegHeader(8, 8).substr(0, 24)).status().message()),
              HasSubstr("truncated JPEG header"));
  EXPECT_THAT(std::string(ProbeImageSize(PngHeader(0, 8)).status().message()),
              HasSubstr("invalid size 0x8"));
  EXPECT_THAT(
      std::string(ProbeImageSize(std::string("\xFF\xD8\xFF\xDA\x00\x02", 6)).status().message()),
      HasSubstr("no frame header (SOF)"));
}

TEST(BuildRolloutRequestTest, FillsRequestFromTrajectoryAndScalesIntrinsics) {
  v1::TrajectoryFile trajectory = MakeOrDie(TrajectoryPreset::kYaw, Frames(5));
  trajectory.set_fps(12);
  RequestOptions options;
  options.output.set_quality(v1::QUALITY_FAST);
  options.model_options["depth"] = "2.5";
  options.client_request_id = "req-1";
  const std::string image = PngHeader(640, 352);
  absl::StatusOr<v1::RolloutRequest> request =
      BuildRolloutRequestFromImage("warp", image, trajectory, 42, options);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->model(), "warp");
  EXPECT_EQ(request->image(), image);
  EXPECT_EQ(request->num_frames(), 5u);
  EXPECT_EQ(request->fps(), 12);
  EXPECT_EQ(request->seed(), 42u);
  EXPECT_EQ(request->output().quality(), v1::QUALITY_FAST);
  EXPECT_EQ(request->model_options().at("depth"), "2.5");
  EXPECT_EQ(request->client_request_id(), "req-1");
  EXPECT_EQ(request->trajectory().poses_size(), 5);
  // 1280x704 intrinsics halved for the 640x352 image.
  EXPECT_DOUBLE_EQ(request->trajectory().intrinsics(0).cx(), 320);
  EXPECT_DOUBLE_EQ(request->trajectory().intrinsics(0).cy(), 176);
  EXPECT_DOUBLE_EQ(request->trajectory().intrinsics(0).fx(),
                   trajectory.trajectory().intrinsics(0).fx() / 2);
  EXPECT_TRUE(server::ValidateRolloutRequest(*request).ok());
}

TEST(BuildRolloutRequestTest, ReportsImageProblemsWithPath) {
  const v1::TrajectoryFile trajectory = MakeOrDie(TrajectoryPreset::kPan, Frames(2));
  const std::string missing = TempPath("missing.png");
  absl::StatusOr<v1::RolloutRequest> request = BuildRolloutRequest("warp", missing, trajectory, 0);
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(request.status().message()), HasSubstr(missing + ": cannot open"));

  const std::string gif = TempPath("image.gif");
  ASSERT_TRUE(WriteFileBytes(gif, "GIF89a......").ok());
  request = BuildRolloutRequest("warp", gif, trajectory, 0);
  ASSERT_FALSE(request.ok());
  EXPECT_THAT(std::string(request.status().message()),
              HasSubstr(gif + ": not a PNG or JPEG image"));
  std::remove(gif.c_str());
}

// ----- RunRollout against a scripted fake server ---------------------------------------------

v1::RolloutEvent Accepted(const std::string& id) {
  v1::RolloutEvent e;
  e.mutable_accepted()->set_rollout_id(id);
  return e;
}

v1::RolloutEvent ProgressEvent(uint32_t frames_done) {
  v1::RolloutEvent e;
  e.mutable_progress()->set_stage(v1::STAGE_BACKBONE);
  e.mutable_progress()->set_frames_done(frames_done);
  e.mutable_progress()->set_frames_total(8);
  return e;
}

v1::RolloutEvent Init() {
  v1::RolloutEvent e;
  e.mutable_stream_init()->set_mime_type("video/mp4");
  e.mutable_stream_init()->set_init_segment("INIT");
  return e;
}

v1::RolloutEvent Chunk(uint32_t index, uint32_t first_frame, uint32_t frames = 4) {
  v1::RolloutEvent e;
  e.mutable_chunk()->set_index(index);
  e.mutable_chunk()->set_first_frame(first_frame);
  e.mutable_chunk()->set_frame_count(frames);
  e.mutable_chunk()->set_data(absl::StrCat("C", index));
  return e;
}

v1::RolloutEvent FinalEvent() {
  v1::RolloutEvent e;
  e.mutable_final()->set_outcome(v1::OUTCOME_SUCCEEDED);
  e.mutable_final()->set_frames_sent(8);
  return e;
}

// Writes a scripted event list, optionally waits for the client to cancel, then returns a
// scripted status.
class FakeRolloutService final : public v1::RolloutService::Service {
 public:
  std::vector<v1::RolloutEvent> events;
  grpc::Status status;
  bool wait_for_cancel = false;
  std::atomic<bool> saw_cancel{false};

  grpc::Status Rollout(grpc::ServerContext* ctx, const v1::RolloutRequest*,
                       grpc::ServerWriter<v1::RolloutEvent>* writer) override {
    for (const v1::RolloutEvent& event : events) {
      if (!writer->Write(event)) break;
    }
    if (wait_for_cancel) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!ctx->IsCancelled() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      saw_cancel = ctx->IsCancelled();
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    return status;
  }
};

class RolloutClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::RolloutService::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  void TearDown() override { server_->Shutdown(); }

  RolloutResult Run(const RolloutCallbacks& callbacks = {}) {
    grpc::ClientContext ctx;
    return RunRollout(*stub_, v1::RolloutRequest(), callbacks, &ctx);
  }

  FakeRolloutService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::RolloutService::Stub> stub_;
};

TEST_F(RolloutClientTest, CollectsWellFormedStreamAndCallsBackInOrder) {
  service_.events = {Accepted("r-7"),  ProgressEvent(0), Init(),      Chunk(0, 0),
                     ProgressEvent(4), Chunk(1, 4),      FinalEvent()};
  std::string order;
  RolloutCallbacks callbacks;
  callbacks.on_accepted = [&](const v1::Accepted& a) { order += "A(" + a.rollout_id() + ")"; };
  callbacks.on_progress = [&](const v1::Progress& p) {
    order += absl::StrCat("P", p.frames_done());
  };
  callbacks.on_init = [&](const v1::StreamInit& i) { order += "I" + i.init_segment(); };
  callbacks.on_chunk = [&](const v1::VideoChunk& c) { order += "[" + c.data() + "]"; };
  callbacks.on_final = [&](const v1::Final&) { order += "F"; };
  const RolloutResult result = Run(callbacks);
  EXPECT_TRUE(result.ok()) << FormatStatus(result.status);
  EXPECT_EQ(order, "A(r-7)P0IINIT[C0]P4[C1]F");
  EXPECT_EQ(result.rollout_id, "r-7");
  EXPECT_TRUE(result.accepted && result.got_init && result.got_final);
  EXPECT_EQ(result.init.mime_type(), "video/mp4");
  ASSERT_EQ(result.chunks.size(), 2u);
  EXPECT_EQ(result.chunks[1].first_frame(), 4u);
  EXPECT_EQ(result.chunks[1].data(), "C1");
  EXPECT_EQ(result.video_bytes, "INITC0C1");
  EXPECT_EQ(result.progress_events, 2);
  EXPECT_EQ(result.last_progress.frames_done(), 4u);
  EXPECT_EQ(result.final.frames_sent(), 8u);
}

TEST_F(RolloutClientTest, CanDropMediaBytes) {
  service_.events = {Accepted("r"), Init(), Chunk(0, 0), FinalEvent()};
  RolloutCallbacks callbacks;
  callbacks.keep_video_bytes = false;
  std::string seen;
  callbacks.on_chunk = [&](const v1::VideoChunk& c) { seen = c.data(); };
  const RolloutResult result = Run(callbacks);
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(seen, "C0");  // Callbacks still get the bytes.
  EXPECT_TRUE(result.video_bytes.empty());
  ASSERT_EQ(result.chunks.size(), 1u);
  EXPECT_TRUE(result.chunks[0].data().empty());
}

TEST_F(RolloutClientTest, OutOfOrderStreamsAreErrors) {
  struct Case {
    std::string name;
    std::vector<v1::RolloutEvent> events;
    std::string expected;
  };
  const Case cases[] = {
      {"progress first", {ProgressEvent(0), Accepted("r")}, "Progress before Accepted"},
      {"chunk before init", {Accepted("r"), Chunk(0, 0)}, "VideoChunk 0 before StreamInit"},
      {"index gap",
       {Accepted("r"), Init(), Chunk(0, 0), Chunk(2, 4)},
       "VideoChunk index 2, expected 1"},
      {"first index not 0", {Accepted("r"), Init(), Chunk(1, 0)}, "VideoChunk index 1, expected 0"},
      {"frame gap",
       {Accepted("r"), Init(), Chunk(0, 0), Chunk(1, 5)},
       "VideoChunk 1 first_frame 5, expected 4"},
      {"second init", {Accepted("r"), Init(), Init()}, "second StreamInit"},
      {"second accepted", {Accepted("r"), Accepted("r")}, "second Accepted"},
      {"event after final",
       {Accepted("r"), Init(), FinalEvent(), Chunk(0, 0)},
       "VideoChunk after Final"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    service_.events = c.events;
    const RolloutResult result = Run();
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INTERNAL);
    EXPECT_EQ(result.status.error_message(), "stream protocol violation: " + c.expected);
  }
}

TEST_F(RolloutClientTest, OkStatusWithoutFinalIsAnError) {
  service_.events = {Accepted("r"), Init(), Chunk(0, 0)};
  const RolloutResult result = Run();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(result.status.error_message(), "stream ended without Final");
  EXPECT_EQ(result.chunks.size(), 1u);
}

TEST_F(RolloutClientTest, ServerErrorIsPassedThrough) {
  service_.status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "num_frames: must be >= 1");
  const RolloutResult result = Run();
  EXPECT_FALSE(result.accepted);
  EXPECT_EQ(FormatStatus(result.status), "INVALID_ARGUMENT: num_frames: must be >= 1");
}

TEST_F(RolloutClientTest, CallbackCanCancelMidStream) {
  service_.events = {Accepted("r"), Init(), Chunk(0, 0)};
  service_.wait_for_cancel = true;
  grpc::ClientContext ctx;
  RolloutCallbacks callbacks;
  callbacks.on_chunk = [&](const v1::VideoChunk&) { ctx.TryCancel(); };
  const RolloutResult result = RunRollout(*stub_, v1::RolloutRequest(), callbacks, &ctx);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(result.chunks.size(), 1u);
  EXPECT_EQ(result.video_bytes, "INITC0");
  server_->Shutdown();  // Waits for the handler, which records whether it saw the cancel.
  EXPECT_TRUE(service_.saw_cancel);
}

TEST(StatusFormatTest, NamesCodes) {
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::UNAVAILABLE), "UNAVAILABLE");
  EXPECT_EQ(FormatStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "")), "NOT_FOUND");
}

}  // namespace
}  // namespace wmserve::client
