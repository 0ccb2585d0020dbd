// The in-process server fixture shared by the server tests: anoclip-server on a loopback port
// with the tiny reference model, a stub, and a /metrics scrape.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <fstream>
#include <string>

#include "anoclip/v1/anoclip.grpc.pb.h"
#include "server/anoclip_server.h"
#include "test_util.h"

namespace anoclip::server {

using anoclip::v1::AnomalyDetectionService;
using anoclip::v1::DetectRequest;
using anoclip::v1::DetectResponse;


using anoclip::v1::AnomalyDetectionService;
using anoclip::v1::DetectRequest;
using anoclip::v1::DetectResponse;

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline std::string CaseImage(int k) {
  return ReadBytes(::anoclip::testing::TinyVitDir() + "/images/case" + std::to_string(k) + ".png");
}

inline ServerConfig TinyConfig() {
  ServerConfig config;
  config.listen = "127.0.0.1:0";
  config.metrics_listen = "127.0.0.1:0";
  config.model_dir = ::anoclip::testing::TinyModelDir();
  config.vocab = ::anoclip::testing::VocabPath();
  config.threads = 0;  // every core, or $OMP_NUM_THREADS (1 in the TSan build)
  config.workers = 4;
  config.drain_timeout_s = 10;
  return config;
}

inline DetectRequest Request(int k, const std::string& class_name, const std::string& id = "") {
  DetectRequest request;
  request.set_request_id(id);
  request.set_image_bytes(CaseImage(k));
  request.mutable_class_spec()->set_name(class_name);
  return request;
}

// The same request as one message of an Inspect stream.
inline anoclip::v1::InspectRequest Inspect(const DetectRequest& request) {
  anoclip::v1::InspectRequest inspect;
  *inspect.mutable_detect() = request;
  return inspect;
}

class ServerTest : public ::testing::Test {
 protected:
  void StartServer(const ServerConfig& config) {
    auto server = AnoclipServer::Start(config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->grpc_port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = AnomalyDetectionService::NewStub(channel_);
  }

  grpc::Status Detect(const DetectRequest& request, DetectResponse* response, int deadline_ms = 20000) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    return stub_->Detect(&context, request, response);
  }

  std::string Metrics() {
    httplib::Client client("127.0.0.1", server_->metrics_port());
    auto result = client.Get("/metrics");
    return result ? result->body : "";
  }

  std::unique_ptr<AnoclipServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<AnomalyDetectionService::Stub> stub_;
};

}  // namespace anoclip::server
