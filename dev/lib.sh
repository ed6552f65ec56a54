# Shared by the dev/ scripts: where things live and small helpers.
# Sourced, never run. Everything the scripts start lives under $RUN_DIR.
DEV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$DEV_DIR/.." && pwd)
RUN_DIR=${STREAMWISE_DEV_RUN_DIR:-$DEV_DIR/.run}
# The name dev/up exports, so that every STREAMWISE_ variable is a setting or STREAMWISE_DEV_.
KAFKA_LIB=${STREAMWISE_DEV_KAFKA_LIB:-$DEV_DIR/.cache/kafka/lib}

log() { printf '%s\n' "$*" >&2; }
die() { printf '%s\n' "$*" >&2; exit 2; }

# A port the kernel says is free right now on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Fetches the Kafka broker jars from Maven Central once; later calls are no-ops.
fetch_kafka_jars() {
  if [ -f "$KAFKA_LIB/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "dev: mvn not found: Maven fetches Kafka's jars (apt-get install maven)"
  log "dev: fetching Apache Kafka jars from Maven Central into $KAFKA_LIB"
  rm -rf "$KAFKA_LIB"; mkdir -p "$KAFKA_LIB"
  mvn -q -B -f "$DEV_DIR/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$KAFKA_LIB" >"$KAFKA_LIB/../mvn.log" 2>&1 \
    || die "dev: mvn could not fetch Kafka's jars; see $KAFKA_LIB/../mvn.log"
  touch "$KAFKA_LIB/.complete"
}
