# voiceos-switch lab: Asterisk 22 (Debian sid's package) with the shipped
# configuration, rendered at start from the environment (asterisk-entrypoint.sh).
# The base is the managed sandbox root, imported by `voiceos-switch lab build`
# (voiceos_switch/lab/images.py); no registry is involved.
ARG ASTERISK_BASE=voiceos-lab/asterisk-base:1
FROM ${ASTERISK_BASE}
COPY asterisk-conf/*.conf asterisk-conf/lab/*.conf dialplan/voiceos_agent.conf /usr/share/voiceos/asterisk/
COPY lab/asterisk-entrypoint.sh /usr/local/bin/voiceos-asterisk-entrypoint
RUN chmod 0755 /usr/local/bin/voiceos-asterisk-entrypoint \
 && rm -f /etc/asterisk/users.conf \
 && asterisk -V
ENTRYPOINT ["/usr/local/bin/voiceos-asterisk-entrypoint"]
