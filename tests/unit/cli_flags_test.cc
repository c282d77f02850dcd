// Daemon flag parsing: dashed spellings, values that look like flags, config-file precedence.
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/flags/flag.h"
#include "server/cli_flags.h"

ABSL_FLAG(std::string, test_config, "", "config file");
ABSL_FLAG(std::string, worker_args, "", "args passed through");
ABSL_FLAG(int, local_workers, 0, "an int");
ABSL_FLAG(bool, verbose_thing, false, "a bool");
ABSL_FLAG(std::string, listen, "default", "a string");

namespace wmserve {
namespace {

std::string ConfigPath() { return absl::GetFlag(FLAGS_test_config); }

absl::Status Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "daemon");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return ParseDaemonFlags(static_cast<int>(argv.size()), argv.data(), &ConfigPath);
}

TEST(DaemonFlags, DashedNamesAndFlagLikeValues) {
  ASSERT_TRUE(Parse({"--local-workers", "3", "--worker-args", "--device cpu --threads 1",
                     "--verbose-thing", "--listen=0.0.0.0:1"})
                  .ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_local_workers), 3);
  // The value of --worker-args is passed through untouched (dashes included).
  EXPECT_EQ(absl::GetFlag(FLAGS_worker_args), "--device cpu --threads 1");
  EXPECT_TRUE(absl::GetFlag(FLAGS_verbose_thing));
  EXPECT_EQ(absl::GetFlag(FLAGS_listen), "0.0.0.0:1");
}

TEST(DaemonFlags, ConfigFileFillsWhatTheCommandLineLeftOpen) {
  const std::string path = ::testing::TempDir() + "/daemon.conf";
  std::ofstream(path) << "# comment\nlocal-workers = 7\nlisten = \"10.0.0.1:5\"\n"
                      << "worker_args = --model warp\n";
  ASSERT_TRUE(Parse({"--test-config", path, "--listen", "127.0.0.1:9"}).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_local_workers), 7);
  EXPECT_EQ(absl::GetFlag(FLAGS_listen), "127.0.0.1:9") << "command line wins";
  EXPECT_EQ(absl::GetFlag(FLAGS_worker_args), "--model warp");
}

TEST(DaemonFlags, ConfigErrorsNameTheLine) {
  const std::string path = ::testing::TempDir() + "/bad.conf";
  std::ofstream(path) << "local-workers = 1\nno-such-flag = 2\n";
  absl::Status s = Parse({"--test-config", path});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr(":2: unknown flag no_such_flag"));
  std::ofstream(path) << "local-workers = many\n";
  s = Parse({"--test-config", path});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("local_workers"));
}

}  // namespace
}  // namespace wmserve
