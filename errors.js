'use strict'
// The error classes of the public API. Every error keynet throws or rejects with is one of these (or a
// TypeError/RangeError for a bad argument, or an AbortError), and carries `code` = class name.

class ErrorNetwork extends Error {
  constructor(message, options) {
    super(message, options)
    this.name = new.target.name
    this.code = new.target.name
  }
}

class ErrorForwardProxy extends ErrorNetwork {}
class ErrorForwardProxyNotRunning extends ErrorForwardProxy {}
class ErrorForwardProxyAuth extends ErrorForwardProxy {}
class ErrorForwardProxyInvalidUrl extends ErrorForwardProxy {}
class ErrorForwardProxyMissingNodeId extends ErrorForwardProxy {}

class ErrorReverseProxy extends ErrorNetwork {}
class ErrorReverseProxyNotRunning extends ErrorReverseProxy {}
class ErrorRelay extends ErrorNetwork {}
class ErrorRelayNotRunning extends ErrorRelay {}

class ErrorConnection extends ErrorNetwork {}
class ErrorConnectionStart extends ErrorConnection {}
class ErrorConnectionStartTimeout extends ErrorConnectionStart {}
class ErrorConnectionTimeout extends ErrorConnection {}

class ErrorCertChain extends ErrorNetwork {}
class ErrorCertChainUnclaimed extends ErrorCertChain {}
class ErrorCertChainEmpty extends ErrorCertChain {}
class ErrorCertChainBroken extends ErrorCertChain {}
class ErrorCertChainDateInvalid extends ErrorCertChain {}
class ErrorCertChainKeyInvalid extends ErrorCertChain {}
class ErrorCertChainSignatureInvalid extends ErrorCertChain {}

/** Discovery found no address for the node id on the DHT. */
class ErrorNodeNotFound extends ErrorConnectionStart {}
/** No replica of a service name was found, or none answered (CONNECT: 502). */
class ErrorServiceNotFound extends ErrorConnectionStart {}

/** PEM material that cannot be used (not PEM, key does not match the leaf certificate). */
class ErrorInvalidTlsConfig extends ErrorNetwork {}

module.exports = {
  ErrorNetwork,
  ErrorForwardProxy,
  ErrorForwardProxyNotRunning,
  ErrorForwardProxyAuth,
  ErrorForwardProxyInvalidUrl,
  ErrorForwardProxyMissingNodeId,
  ErrorReverseProxy,
  ErrorReverseProxyNotRunning,
  ErrorRelay,
  ErrorRelayNotRunning,
  ErrorConnection,
  ErrorConnectionStart,
  ErrorConnectionStartTimeout,
  ErrorConnectionTimeout,
  ErrorCertChain,
  ErrorCertChainUnclaimed,
  ErrorCertChainEmpty,
  ErrorCertChainBroken,
  ErrorCertChainDateInvalid,
  ErrorCertChainKeyInvalid,
  ErrorCertChainSignatureInvalid,
  ErrorNodeNotFound,
  ErrorServiceNotFound,
  ErrorInvalidTlsConfig,
}
