// keynet as an ES module: the very objects of the CommonJS entry (index.js), so a program that
// mixes `import` and `require` sees one ForwardProxy class and one set of error classes.
import keynet from './index.js'

export default keynet
export const {
  utils,
  ForwardProxy,
  ReverseProxy,
  Relay,
  generateIdentity,
  rotateIdentity,
  nodeIdFromCertificate,
  generateServiceOwner,
  signServiceMember,
  setLogFilter,
  errors,
} = keynet
