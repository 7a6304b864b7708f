# berth: the two commands are `make up` and `make test`.
.PHONY: up test build images bench clean

up:
	./scripts/up.sh

test:
	./scripts/test.sh

build:
	go build -o bin/berth ./cmd/berth

images:
	./scripts/docker-up.sh
	./scripts/build-images.sh

bench:
	./bench/run.sh

clean:
	rm -rf bin
