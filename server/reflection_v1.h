// Server reflection under both names generic tools ask for: grpc.reflection.v1alpha (gRPC's own
// plugin) and grpc.reflection.v1, which gRPC 1.51 does not implement. The two protocols have the
// same messages and field numbers, so v1 is served by relaying each stream, message by message,
// to the v1alpha service of the same server over an in-process channel. The health service's
// descriptors are registered too, so `list` and `describe` cover every service served.
#pragma once

#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"

namespace anoclip::server {

class ReflectionV1Service final : public grpc::reflection::v1::ServerReflection::Service {
 public:
  // Call before ServerBuilder::BuildAndStart: enables the v1alpha plugin and registers this.
  void RegisterWith(grpc::ServerBuilder& builder);
  // Call once the server runs: streams are relayed to its v1alpha service from then on.
  void Attach(grpc::Server* server);

  grpc::Status ServerReflectionInfo(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<grpc::reflection::v1::ServerReflectionResponse,
                               grpc::reflection::v1::ServerReflectionRequest>* stream) override;

 private:
  absl::Mutex mutex_;
  std::shared_ptr<grpc::Channel> channel_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace anoclip::server
