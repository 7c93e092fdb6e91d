package sds

import (
	"context"
	"fmt"
	"log/slog"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/svidd/svidd/pkg/admission"
	"github.com/svidd/svidd/pkg/workload"
)

// FetchSecrets answers one request from a fresh View: every requested Secret that exists (no
// names, or "*": everything the caller is entitled to). When none of them exists it returns
// NotFound rather than an empty response, so a one-shot client can tell "not (yet) entitled"
// from success; SPIRE answers InvalidArgument, which wrongly suggests the request was
// malformed. Names that do not exist beside ones that do are left out, as on a stream.
func (s *Server) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	if err := checkTypeURL(req.GetTypeUrl()); err != nil {
		return nil, err
	}
	if err := checkNames("resource_names", req.GetResourceNames()); err != nil {
		return nil, err
	}
	log := newStreamLog(s.log, "FetchSecrets", admission.AccountFrom(ctx))
	log.setNode(req.GetNode())
	sub, err := s.watch(ctx, log)
	if err != nil {
		return nil, err
	}
	view := sub.Latest()
	sub.Close()

	names, wildcard := requestedNames(req.GetResourceNames(), true)
	rs := s.resolveAll(view, names, wildcard)
	if len(rs) == 0 {
		if l := log.at(slog.LevelDebug); l != nil {
			l.Debug("no requested secret exists for caller", "names", len(names), "wildcard", wildcard)
		}
		return nil, status.Error(codes.NotFound, "none of the requested secrets exists for this caller")
	}
	resp, err := s.fetchResponse(view, rs)
	if err != nil {
		if l := log.at(slog.LevelError); l != nil {
			log.limited(l, slog.LevelError, "building sds response failed", "error", err)
		}
		return nil, status.Error(codes.Internal, "building response failed")
	}
	s.metrics.ResponseSent(KindFetch, len(rs))
	return resp, nil
}

// fetchResponse builds the response as a message: a unary handler returns the generated type.
// FetchSecrets is rare (streams are what Envoy uses), so decoding the shared encoding is
// cheaper than keeping a second way to build responses.
func (s *Server) fetchResponse(v *workload.View, rs []resource) (*discoveryv3.DiscoveryResponse, error) {
	msg, _, err := s.buildResponse(v, rs)
	if err != nil {
		return nil, err
	}
	resp := &discoveryv3.DiscoveryResponse{}
	if err := proto.Unmarshal(msg.Bytes(), resp); err != nil {
		return nil, fmt.Errorf("decoding response: %w", err)
	}
	return resp, nil
}
