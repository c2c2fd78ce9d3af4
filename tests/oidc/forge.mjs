// Signs CLAIMS (JSON) with a fresh RSA key the identity provider never had, under KID,
// RS256: a token "signed by another key" for the refusal tests. Prints the token.
import { SignJWT, generateKeyPair } from 'jose';

const claims = JSON.parse(process.env.CLAIMS);
const { privateKey } = await generateKeyPair('RS256');
const token = await new SignJWT(claims)
  .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: process.env.KID })
  .sign(privateKey);
console.log(token);
