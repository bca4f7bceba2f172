'use strict'
// The error classes of the public API. Every error keynet throws or rejects with is one of these (or a
// TypeError/RangeError for a bad argument, or an AbortError), and carries `code` = class name.
//
// As in the original (its ErrorPolykey base), each also carries `description` (what the class means),
// `exitCode` (a sysexits value a CLI can exit with) and `data` (an object, `{}` unless told). The
// original's classes that keynet never throws (uTP/TLS composition, node-forge names) are exported
// too, so code that names them in `instanceof` checks or catch tables still loads and runs.

/** sysexits.h values, as the original used them. */
const EXIT = Object.freeze({ GENERAL: 1, USAGE: 64, NOHOST: 68, UNAVAILABLE: 69, SOFTWARE: 70, TEMPFAIL: 75, PROTOCOL: 76, NOPERM: 77 })

class ErrorNetwork extends Error {
  static description = 'Network error'
  static exitCode = EXIT.GENERAL

  /**
   * @param {string} [message]
   * @param {{ cause?: unknown, data?: object }} [options]
   */
  constructor(message = '', options = {}) {
    super(message, options && options.cause !== undefined ? { cause: options.cause } : undefined)
    this.name = new.target.name
    this.code = new.target.name
    this.description = new.target.description
    this.exitCode = new.target.exitCode
    this.data = (options && options.data) || {}
  }
}

/** Declares `name` extending `Parent` with its description and exit code. */
function define(name, Parent, description, exitCode = Parent.exitCode) {
  const Cls = { [name]: class extends Parent {} }[name]
  Cls.description = description
  Cls.exitCode = exitCode
  return Cls
}

const ErrorForwardProxy = define('ErrorForwardProxy', ErrorNetwork, 'Forward proxy error')
const ErrorForwardProxyNotRunning = define('ErrorForwardProxyNotRunning', ErrorForwardProxy, 'ForwardProxy is not running', EXIT.USAGE)
const ErrorForwardProxyAuth = define('ErrorForwardProxyAuth', ErrorForwardProxy, 'Incorrect HTTP connect proxy password', EXIT.NOPERM)
const ErrorForwardProxyInvalidUrl = define('ErrorForwardProxyInvalidUrl', ErrorForwardProxy, 'Invalid target host used for HTTP connect proxy', EXIT.PROTOCOL)
const ErrorForwardProxyMissingNodeId = define('ErrorForwardProxyMissingNodeId', ErrorForwardProxy, 'Node ID query parameter is required for HTTP connect proxy', EXIT.PROTOCOL)

const ErrorReverseProxy = define('ErrorReverseProxy', ErrorNetwork, 'Reverse proxy error')
const ErrorReverseProxyNotRunning = define('ErrorReverseProxyNotRunning', ErrorReverseProxy, 'ReverseProxy is not running', EXIT.USAGE)
const ErrorRelay = define('ErrorRelay', ErrorNetwork, 'Relay error')
const ErrorRelayNotRunning = define('ErrorRelayNotRunning', ErrorRelay, 'Relay is not running', EXIT.USAGE)

const ErrorConnection = define('ErrorConnection', ErrorNetwork, 'Connection error')
const ErrorConnectionNotRunning = define('ErrorConnectionNotRunning', ErrorConnection, 'Connection is not running', EXIT.USAGE)
const ErrorConnectionComposed = define('ErrorConnectionComposed', ErrorConnection, 'Connection is composed', EXIT.USAGE)
const ErrorConnectionNotComposed = define('ErrorConnectionNotComposed', ErrorConnection, 'Connection is not composed', EXIT.USAGE)
const ErrorConnectionMessageParse = define('ErrorConnectionMessageParse', ErrorConnection, 'Network message received is invalid', EXIT.TEMPFAIL)
const ErrorConnectionTimeout = define('ErrorConnectionTimeout', ErrorConnection, 'Connection keep-alive timed out', EXIT.UNAVAILABLE)
const ErrorConnectionEndTimeout = define('ErrorConnectionEndTimeout', ErrorConnection, 'Connection end timed out', EXIT.UNAVAILABLE)
const ErrorConnectionStart = define('ErrorConnectionStart', ErrorConnection, 'Connection start failed', EXIT.PROTOCOL)
const ErrorConnectionStartTimeout = define('ErrorConnectionStartTimeout', ErrorConnectionStart, 'Connection start timed out', EXIT.NOHOST)
const ErrorConnectionCompose = define('ErrorConnectionCompose', ErrorConnection, 'Connection compose failed', EXIT.PROTOCOL)
const ErrorConnectionComposeTimeout = define('ErrorConnectionComposeTimeout', ErrorConnectionCompose, 'Connection compose timed out', EXIT.NOHOST)

const ErrorCertChain = define('ErrorCertChain', ErrorNetwork, 'Certificate chain error', EXIT.PROTOCOL)
const ErrorCertChainUnclaimed = define('ErrorCertChainUnclaimed', ErrorCertChain, 'The target node id is not claimed by any certificate')
const ErrorCertChainEmpty = define('ErrorCertChainEmpty', ErrorCertChain, 'Certificate chain is empty')
const ErrorCertChainBroken = define('ErrorCertChainBroken', ErrorCertChain, 'The signature chain is broken')
const ErrorCertChainDateInvalid = define('ErrorCertChainDateInvalid', ErrorCertChain, 'Certificate in the chain is expired')
const ErrorCertChainNameInvalid = define('ErrorCertChainNameInvalid', ErrorCertChain, 'Certificate is missing the common name')
const ErrorCertChainKeyInvalid = define('ErrorCertChainKeyInvalid', ErrorCertChain, 'Certificate public key does not generate the Node ID')
const ErrorCertChainSignatureInvalid = define('ErrorCertChainSignatureInvalid', ErrorCertChain, 'Certificate self-signed signature is invalid')

const ErrorHostnameResolutionFailed = define('ErrorHostnameResolutionFailed', ErrorNetwork, 'Unable to resolve hostname', EXIT.NOHOST)

/** Discovery found no address for the node id on the DHT. */
const ErrorNodeNotFound = define('ErrorNodeNotFound', ErrorConnectionStart, 'Node id not found on the DHT', EXIT.NOHOST)
/** No replica of a service name was found, or none answered (CONNECT: 502). */
const ErrorServiceNotFound = define('ErrorServiceNotFound', ErrorConnectionStart, 'No replica of the service answered', EXIT.NOHOST)

/** PEM material that cannot be used (not PEM, key does not match the leaf certificate). */
const ErrorInvalidTlsConfig = define('ErrorInvalidTlsConfig', ErrorNetwork, 'TLS configuration is invalid', EXIT.USAGE)

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
  ErrorConnectionNotRunning,
  ErrorConnectionComposed,
  ErrorConnectionNotComposed,
  ErrorConnectionMessageParse,
  ErrorConnectionTimeout,
  ErrorConnectionEndTimeout,
  ErrorConnectionStart,
  ErrorConnectionStartTimeout,
  ErrorConnectionCompose,
  ErrorConnectionComposeTimeout,
  ErrorCertChain,
  ErrorCertChainUnclaimed,
  ErrorCertChainEmpty,
  ErrorCertChainBroken,
  ErrorCertChainDateInvalid,
  ErrorCertChainNameInvalid,
  ErrorCertChainKeyInvalid,
  ErrorCertChainSignatureInvalid,
  ErrorHostnameResolutionFailed,
  ErrorNodeNotFound,
  ErrorServiceNotFound,
  ErrorInvalidTlsConfig,
}
