#!/bin/sh
# voiceos-switch lab: the Asterisk container's entrypoint.
#
# Renders the shipped configuration (asterisk-conf/, asterisk-conf/lab/ and
# dialplan/voiceos_agent.conf, copied to /usr/share/voiceos/asterisk) into
# /etc/asterisk: each {{name}} placeholder takes the value of the environment
# variable AST_<NAME> (upper case); a placeholder without a variable stops the
# container with a message naming it. Then runs Asterisk in the foreground.
set -eu

TEMPLATES=${VOICEOS_ASTERISK_TEMPLATES:-/usr/share/voiceos/asterisk}
ETC=/etc/asterisk
LAB_DIR=/var/spool/voiceos

fail() {
  echo "asterisk-entrypoint: $*" >&2
  exit 1
}

render() {
  src=$1
  out=$2
  set --
  for key in $(grep -o '{{ *[A-Za-z0-9_]* *}}' "$src" | tr -d '{} ' | sort -u); do
    var="AST_$(printf '%s' "$key" | tr '[:lower:]' '[:upper:]')"
    eval "isset=\${$var+x}"
    [ -n "$isset" ] || fail "$(basename "$src"): no value for {{$key}} (set $var)"
    eval "value=\${$var}"
    case $value in
      *'
'*) fail "$var spans lines" ;;
    esac
    # escape what sed's replacement treats specially: \ & and the | delimiter
    escaped=$(printf '%s' "$value" | sed -e 's/[\\&|]/\\&/g')
    set -- "$@" -e "s|{{ *$key *}}|$escaped|g"
  done
  if [ $# -eq 0 ]; then
    cp "$src" "$out.tmp"
  else
    sed "$@" "$src" >"$out.tmp"
  fi
  chown root:asterisk "$out.tmp"
  chmod 0640 "$out.tmp"
  mv "$out.tmp" "$out"
}

[ -d "$TEMPLATES" ] || fail "no templates in $TEMPLATES"
for src in "$TEMPLATES"/*.conf; do
  render "$src" "$ETC/$(basename "$src")"
done
# pbx_config warns about users.conf on every load when it exists
rm -f "$ETC/users.conf"

# the lab caller's files (the host's folder, bind-mounted): everyone writes
mkdir -p "$LAB_DIR" /run/asterisk /var/log/asterisk /var/lib/asterisk /var/spool/asterisk
chmod 0777 "$LAB_DIR"
chown asterisk:asterisk /run/asterisk /var/log/asterisk /var/lib/asterisk /var/spool/asterisk

echo "asterisk-entrypoint: configuration rendered; starting Asterisk" >&2
exec asterisk -f -n -U asterisk -G asterisk "$@"
