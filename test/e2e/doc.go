// Package e2e holds berth's end-to-end tests. They build cmd/berth, start
// `berth up` against the local Docker engine (one berth, with its own data
// directory and cluster id, per test) and drive it the way a user does:
// through the CLI, the REST API, curl-like requests to the instances and
// the docker CLI.
//
// Run them with:
//
//	scripts/docker-up.sh && scripts/build-images.sh --if-missing
//	go test -count=1 ./test/e2e/ -v
//
// Without a Docker engine the tests skip, except with CI=true, where they fail.
package e2e
